"""The attention benchmark times the shipped Shapes UNet's own attention shapes under both CPU backends."""

from __future__ import annotations

import json
import sys


def test_attention_benchmark_times_each_attention_of_the_shipped_unet(tmp_path, monkeypatch, capsys):
    import bench_attention

    out = tmp_path / "attention.json"
    monkeypatch.setattr(sys, "argv", ["bench_attention.py", "--repeats", "1", "--batch", "2", "--json", str(out)])
    bench_attention.main()
    rows = json.loads(out.read_text())
    # Two cross-attention down blocks and the mid block, each with a self- and a cross-attention.
    assert [r["attention"] for r in rows] == [
        "self, level 0", "cross, level 0", "self, level 1", "cross, level 1", "self, mid", "cross, mid",
    ]  # fmt: skip
    assert rows[0]["query"] == [2, 8, 256, 8]  # 16x16 latents in 8 heads of 8 channels
    assert rows[1]["keys"] == [2, 8, 77, 8]  # the text encoder's 77 states
    assert all(r["flash_ms"] > 0 and r["math_ms"] > 0 for r in rows)
    assert capsys.readouterr().out.count("x\n") == len(rows)  # a ratio printed per row
