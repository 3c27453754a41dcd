"""The modifier token and how plain prompts bind to it."""

from __future__ import annotations

import re

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from cdvideo.errors import UserError


def add_token(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, token: str, init_word: str, vocab_entry: bool = False
) -> tuple[int, list[str]]:
    """Add `token`, initialised as the mean embedding of `init_word`'s tokens. Returns (id, notes).

    With `vocab_entry`, a word that is several tokens but also one vocabulary entry starts at that
    entry's row: the official ClassDiffusion script's slow tokenizer read its initializer "ktn" so
    (SD1.5: the word-start piece `ktn`, id 42170, where the word tokenizes as `k` + `tn</w>`)."""
    if not re.fullmatch(r"\S+", token):
        raise UserError(f"--token {token!r} must be one word without spaces, such as <new1>")
    vocab = tokenizer.get_vocab()
    # CLIP's BPE stores whole words with a "</w>" suffix: "dog" is known as "dog</w>".
    if token in vocab or f"{token.lower()}</w>" in vocab:
        raise UserError(
            f"token {token!r} is already in the tokenizer's vocabulary; choose another --token, e.g. <sks1>"
        )
    notes = []
    init_ids = tokenizer(init_word, add_special_tokens=False).input_ids
    if not init_ids:
        raise UserError(f"--class-word {init_word!r} has no tokens; give a word such as dog")
    if len(init_ids) > 1 and vocab_entry and init_word in vocab:
        notes.append(f"token starts at the vocabulary entry {init_word!r} (id {vocab[init_word]})")
        init_ids = [vocab[init_word]]
    elif len(init_ids) > 1:
        pieces = tokenizer.convert_ids_to_tokens(init_ids)
        word = "init word" if vocab_entry else "class word"
        notes.append(f"{word} {init_word!r} is {len(init_ids)} tokens {pieces}: token starts at their mean")
    tokenizer.add_tokens([token])
    token_id = tokenizer.convert_tokens_to_ids(token)
    text_encoder.resize_token_embeddings(len(tokenizer))
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[token_id] = weight[init_ids].mean(0)
    return token_id, notes


def _whole(words: str) -> str:
    """Regex for `words` as whole words: not inside a longer word or a <token>, any run of spaces between."""
    return r"(?<![\w<>])" + r"\s+".join(map(re.escape, words.split())) + r"(?![\w<>])"


def bind_prompt(prompt: str, token: str, class_word: str) -> tuple[str, str | None]:
    """Put the concept into a plain prompt: 'a dog running' -> 'a <new1> dog running'.

    Returns (prompt, warning). A prompt that already has the token is kept; one that names
    neither the token nor the class word gets a warning, since the subject will not appear.
    Only the first whole-word, case-insensitive match of the class word is bound.
    """
    if not token.strip() or not class_word.strip():
        return prompt, f"the concept has no token or class word ({token!r}, {class_word!r}): prompt used as written"
    if re.search(_whole(token), prompt):
        return prompt, None
    pattern = re.compile(_whole(class_word), re.IGNORECASE)
    if not pattern.search(prompt):
        return prompt, (
            f"prompt {prompt!r} names neither {class_word!r} nor {token}: the trained subject will not appear"
        )
    return pattern.sub(lambda m: f"{token} {m.group(0)}", prompt, count=1), None


def unbind_prompt(prompt: str, token: str) -> str:
    """The prompt without the concept's token: 'a <new1> dog running' -> 'a dog running'."""
    return re.sub(r"\s+", " ", re.sub(_whole(token), " ", prompt)).strip()


def token_count_warning(tokenizer: CLIPTokenizer, prompt: str) -> str | None:
    """CLIP sees 77 tokens; say what a longer prompt loses."""
    ids = tokenizer(prompt, add_special_tokens=True).input_ids
    limit = tokenizer.model_max_length
    if len(ids) <= limit:
        return None
    kept = tokenizer.decode(ids[1 : limit - 1])
    return f"prompt is {len(ids)} tokens, over CLIP's {limit}: only {kept!r} is used"
