"""Nothing lost: a full disk and a NaN loss leave earlier outputs whole; prompt binding fuzzed."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_animate_args, cli_train_args
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from cdvideo.cli import main as cli_main
from cdvideo.concept import load_concept
from cdvideo.prompts import bind_prompt


def snapshot(folder: Path, skip: tuple[str, ...] = ("metrics.jsonl",)) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def hidden_leftovers(folder: Path) -> list[Path]:
    return list(folder.rglob(".*"))


def run_with_file_size_limit(args: list[str], limit: int) -> subprocess.CompletedProcess:
    """The CLI in a process that may not write past `limit` bytes in any file: a full disk, as writes see it."""

    def limit_files() -> None:
        # Ignored SIGXFSZ (kept across exec, so ffmpeg too): the write fails with EFBIG instead of killing.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cdvideo.cli", *args],
        preexec_fn=limit_files,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_one_clear_line(err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip() and "%|" not in line]  # bars aside
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("what", ["concept", "checkpoint"])
def test_full_disk_during_train_keeps_the_previous_concept(what, tiny_base, dog_photos, tmp_path):
    extra = ["--checkpoint-every", "1"] if what == "checkpoint" else []
    out = tmp_path / "c"
    assert cli_main(cli_train_args(tiny_base, dog_photos, out, *extra, steps=2)) == 0
    before = snapshot(out)
    limit = (out / "pytorch_lora_weights.safetensors").stat().st_size // 2
    assert (out / "metrics.jsonl").stat().st_size * 4 < limit  # the log still fits: the weights are what fail

    done = run_with_file_size_limit(cli_train_args(tiny_base, dog_photos, out, *extra, "--seed", "9", steps=2), limit)
    assert done.returncode == 2
    assert_one_clear_line(done.stderr, f"cannot write to {out}", "File too large", "free some space")
    assert snapshot(out) == before
    assert not hidden_leftovers(out)
    load_concept(out)  # still whole


def test_full_disk_during_animate_keeps_the_previous_video(tiny_base, tiny_adapter, tmp_path):
    out = tmp_path / "v"
    args = cli_animate_args(tiny_base, tiny_adapter, out, "--seed", "1", frames=8)
    assert cli_main([*args, "--steps", "1"]) == 0
    before = snapshot(out)
    limit = (out / "a-dog-1.mp4").stat().st_size // 2

    done = run_with_file_size_limit([*args, "--steps", "2"], limit)
    assert done.returncode == 2
    assert_one_clear_line(done.stderr, f"cannot write to {out}", "File too large")
    assert snapshot(out) == before
    assert not hidden_leftovers(out)


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_base, dog_photos, tmp_path, capsys):
    out = tmp_path / "c"

    def train(*extra: str, steps: int) -> int:
        return cli_main(cli_train_args(tiny_base, dog_photos, out, "--checkpoint-every", "2", *extra, steps=steps))

    assert train(steps=4) == 0  # a good run: checkpoint at step 2, concept at step 4
    good = snapshot(out)
    capsys.readouterr()

    # An absurd learning rate: the LoRA weights leap to ~1e30 at step 3 and the step-4 loss overflows.
    assert train("--resume", "latest", "--lora-lr", "1e30", steps=8) == 2
    err = capsys.readouterr().err
    assert_one_clear_line(err, "NaN or infinite by step 4", "checkpoints/step-000002", "--resume latest")
    assert snapshot(out) == good  # checkpoint and concept untouched, no step-4 checkpoint of broken weights
    assert not hidden_leftovers(out)

    # The kept checkpoint is usable: resuming with a sane rate finishes with finite weights.
    assert train("--resume", "latest", steps=8) == 0
    assert "resumed from step 2" in capsys.readouterr().out
    for name in ("pytorch_lora_weights.safetensors", "learned_embeds.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(out / name).values())


def test_a_broken_last_update_is_never_saved_as_a_concept(tiny_base, dog_photos, tmp_path, capsys):
    out = tmp_path / "c"
    # Step 1's loss is finite; its update (infinite rate) is not, and no later loss would show it.
    assert cli_main(cli_train_args(tiny_base, dog_photos, out, "--lora-lr", "inf", steps=1)) == 2
    assert_one_clear_line(capsys.readouterr().err, "NaN or infinite by step 1", "no checkpoint was written")
    assert not (out / "cdvideo.json").exists()


# --- prompt binding, fuzzed -------------------------------------------------------------------------

TOKEN = "<new1>"
CLASS_WORDS = st.sampled_from(["dog", "cat", "teddy bear", "t-rex", "C++", "a.b", "ß", "dog?"])
FRAGMENTS = st.sampled_from(
    ["a", "photo", "of", "dog", "Dog", "DOGS", "hotdog", "dogma", "cat", "cats", "teddy", "bear", "bear,",
     "t-rex", "<dog>", "<new10>", "<new10> dog", "teddy  bear", "C++", "a.b", "axb", "ß", "dog?", "(dog)",
     "dog's", "  ", "\t", ",", "."]
)  # fmt: skip
PROMPTS = st.lists(FRAGMENTS, max_size=12).map(" ".join) | st.text(max_size=60)


def occurs_as_whole_words(prompt: str, class_word: str) -> bool:
    """Independent oracle: a case-insensitive occurrence with no letter, digit, _ or <> on either side."""
    text, target = " ".join(prompt.split()).lower(), " ".join(class_word.split()).lower()
    text = f" {text} "  # prompt.split() dropped the outer spaces: edges count as spaces
    for start in (i for i in range(len(text)) if text.startswith(target, i)):
        before, after = text[start - 1], text[start + len(target)]
        if not any(c.isalnum() or c in "_<>" for c in (before, after)):
            return True
    return False


@settings(max_examples=200, deadline=None)
@given(prompt=PROMPTS, class_word=CLASS_WORDS)
def test_binding_only_inserts_the_token_before_a_whole_class_word(prompt, class_word):
    bound, warning = bind_prompt(prompt, TOKEN, class_word)
    if bound == prompt:
        return
    assert warning is None
    at = bound.index(f"{TOKEN} ")
    assert bound[:at] + bound[at + len(TOKEN) + 1 :] == prompt  # an insertion, nothing else changed
    after = bound[at + len(TOKEN) + 1 :]
    assert re.match(r"\s+".join(map(re.escape, class_word.split())), after, re.IGNORECASE)
    assert at == 0 or not (bound[at - 1].isalnum() or bound[at - 1] in "_<>")  # not glued to a word before


@settings(max_examples=200, deadline=None)
@given(prompt=PROMPTS, class_word=CLASS_WORDS)
def test_binding_is_idempotent_and_warns_exactly_when_nothing_binds(prompt, class_word):
    bound, warning = bind_prompt(prompt, TOKEN, class_word)
    if bound != prompt:
        assert warning is None and bind_prompt(bound, TOKEN, class_word) == (bound, None)
    elif warning is None:  # kept as written without a warning: the token was there already
        assert re.search(r"(?<![\w<>])<new1>(?![\w<>])", prompt)


@settings(max_examples=150, deadline=None)
@given(prompt=st.lists(FRAGMENTS, max_size=12).map(" ".join), class_word=CLASS_WORDS)
def test_binding_matches_an_independent_whole_word_oracle(prompt, class_word):
    has_token = re.search(r"(?<![\w<>])<new1>(?![\w<>])", prompt)
    bound, _ = bind_prompt(prompt, TOKEN, class_word)
    assert (bound != prompt) == (not has_token and occurs_as_whole_words(prompt, class_word))


@settings(max_examples=150, deadline=None)
@given(prompt=st.text(max_size=80), class_word=st.text(max_size=12))
def test_binding_never_fails_and_never_touches_a_prompt_without_the_class_word(prompt, class_word):
    bound, _ = bind_prompt(prompt, TOKEN, class_word)
    if not class_word.strip() or class_word.split()[0].casefold() not in prompt.casefold():
        assert bound == prompt


def test_binding_examples_found_by_fuzzing():
    assert bind_prompt("a dog with asks", "sks", "dog") == ("a sks dog with asks", None)  # token inside a word
    assert bind_prompt("a <new10> dog", "<new1>", "dog")[0] == "a <new10> <new1> dog"  # a longer token
    assert bind_prompt("a teddy  bear", "<t>", "teddy bear")[0] == "a <t> teddy  bear"  # spaces inside
    assert bind_prompt("a dog", "<new1>", " dog ")[0] == "a <new1> dog"  # padded class word
    assert bind_prompt("a  dog", "<new1>", "")[0] == "a  dog"  # an empty class word matched everywhere
