"""The Shapes UNet's attention calls under torch's CPU SDPA backends, forward and backward, side by side.

The training step's largest single kernel is the self-attention of the first block: 16x16 latents (256
tokens) in 8 heads of 8 channels (diffusers reads the config's `attention_head_dim: 8` as the head
count). This times each attention shape the UNet makes, as the training step makes it (batch 8: 4
subject and 4 prior items), under flash attention (torch's CPU default) and the math backend, and
prints the ratio. Shapes come from the shipped UNet's config.

    python benchmarks/bench_attention.py
    python benchmarks/bench_attention.py --batch 8 --repeats 20 --json runs/bench/attention.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

UNET_CONFIG = Path(__file__).resolve().parents[1] / "cdvideo" / "shapes" / "weights" / "base" / "unet" / "config.json"
TEXT_TOKENS = 77
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}


def attention_shapes(config: dict, batch: int) -> list[tuple[str, tuple, tuple]]:
    """(name, query shape, key shape) of each distinct attention in the UNet's cross-attention blocks (the
    up blocks repeat the down blocks' shapes)."""
    heads, size = config["attention_head_dim"], config["sample_size"]
    levels = list(enumerate(zip(config["down_block_types"], config["block_out_channels"], strict=True)))
    if "CrossAttn" in (config.get("mid_block_type") or "UNetMidBlock2DCrossAttn"):
        levels.append((len(levels) - 1, ("mid CrossAttn", config["block_out_channels"][-1])))
    shapes = []
    for level, (kind, channels) in levels:
        if "CrossAttn" in kind:
            query = (batch, heads, (size // 2**level) ** 2, channels // heads)
            where = "mid" if kind.startswith("mid") else f"level {level}"
            shapes.append((f"self, {where}", query, query))
            shapes.append((f"cross, {where}", query, (*query[:2], TEXT_TOKENS, query[3])))
    return shapes


def time_call(backend: SDPBackend, query_shape: tuple, key_shape: tuple, repeats: int) -> float:
    """Median seconds of one forward and backward pass."""
    q = torch.randn(query_shape, requires_grad=True)
    k, v = (torch.randn(key_shape, requires_grad=True) for _ in range(2))
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        with sdpa_kernel(backend):
            F.scaled_dot_product_attention(q, k, v).sum().backward()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="items per UNet call (the training step's 4 + 4)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; forward + backward, median of {args.repeats}")
    print(f"{'attention':18s} {'query':>18s} {'keys':>18s} {'flash ms':>9s} {'math ms':>9s} {'math/flash':>10s}")
    for name, query, key in attention_shapes(json.loads(UNET_CONFIG.read_text()), args.batch):
        ms = {b: 1e3 * time_call(backend, query, key, args.repeats) for b, backend in BACKENDS.items()}
        rows.append({"attention": name, "query": query, "keys": key, **{f"{b}_ms": round(t, 3) for b, t in ms.items()}})
        print(f"{name:18s} {str(query):>18s} {str(key):>18s} {ms['flash']:9.2f} {ms['math']:9.2f} "
              f"{ms['math'] / ms['flash']:9.2f}x")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
