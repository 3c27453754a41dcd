"""Write configs/sd15/tokenizer/: SD1.5's CLIP tokenizer, rebuilt from the BPE file open_clip ships.

Single-file SD1.5 checkpoints carry no tokenizer, and the hub is not always reachable. The CLIP
vocabulary (OpenAI, MIT licence) is the `bpe_simple_vocab_16e6.txt.gz` in the `open_clip_torch`
wheel; this rebuilds `vocab.json` + `merges.txt` from it exactly as CLIP's own SimpleTokenizer
does, in the layout of `stable-diffusion-v1-5/tokenizer`.

    pip download open_clip_torch --no-deps -d /tmp/oc && unzip -o /tmp/oc/*.whl 'open_clip/*.gz' -d /tmp/oc
    python scripts/make_sd15_tokenizer.py /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from transformers.convert_slow_tokenizer import bytes_to_unicode

OUT = Path(__file__).resolve().parent.parent / "configs" / "sd15" / "tokenizer"
VOCAB_SIZE = 49408


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bpe_gz", help="open_clip's bpe_simple_vocab_16e6.txt.gz")
    args = parser.parse_args()
    # CLIP keeps the first 49152 - 256 - 2 merges (SimpleTokenizer.__init__).
    lines = gzip.open(args.bpe_gz).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "errors": "replace",
        "add_prefix_space": False,
    }
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {OUT} ({len(vocab)} tokens)")


if __name__ == "__main__":
    main()
