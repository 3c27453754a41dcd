"""Optical flow and VBench's dynamic degree, on real synthetic clips with a known motion."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cdvideo import flow


def texture(size: int, seed: int = 0) -> torch.Tensor:
    """A smooth random colour texture (3, size, size) in [0, 1]: every window has 2-D structure."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(1, 3, size // 4, size // 4, generator=g), size=(size, size), mode="bicubic")[0]


def panning_clip(shifts: list[int], size: int = 64) -> np.ndarray:
    """(F, size, size, 3) uint8: a window over a larger texture, moved right by each shift in turn."""
    big = texture(size + sum(shifts) + 8)
    x, frames = sum(shifts) + 4, []
    for shift in [0, *shifts]:
        x -= shift  # the window moves left, so the content moves right
        frames.append(big[:, 4 : 4 + size, x : x + size])
    return (torch.stack(frames).permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@pytest.mark.parametrize("shift", [0, 1, 3, 6])
def test_lucas_kanade_recovers_a_known_translation(shift):
    clip = torch.from_numpy(panning_clip([shift], size=96)).permute(0, 3, 1, 2).float() / 255
    estimate = flow.lucas_kanade(clip[:1], clip[1:])[0, :, 16:-16, 16:-16]  # away from the borders
    assert estimate[0].median().item() == pytest.approx(shift, abs=0.15)
    assert estimate[1].median().item() == pytest.approx(0.0, abs=0.15)


def test_vbench_thresholds_scale_with_size_and_length():
    assert flow.thresholds(512, 512, 16) == (12.0, 4)  # VBench's 6 px at 256 px, 4 pairs of 16 frames
    assert flow.thresholds(256, 320, 8) == (6.0, 2)
    assert flow.thresholds(64, 64, 2) == (1.5, 1)  # at least one pair


def test_dynamic_degree_counts_pairs_over_the_threshold():
    lk = flow.FlowEstimator(flow.LUCAS_KANADE, flow.lucas_kanade)
    # 64 px, 8 frames: a pair moves above 1.5 px and the clip needs 2 such pairs of its 7.
    steady = flow.dynamic_degree(panning_clip([3] * 7), lk)
    assert steady["dynamic"] is True and steady["flow"] == pytest.approx(3.0, rel=0.15)
    slow = flow.dynamic_degree(panning_clip([1] * 7), lk)
    assert slow["dynamic"] is False and slow["flow"] == pytest.approx(1.0, rel=0.15)
    one_jump = flow.dynamic_degree(panning_clip([0, 0, 3, 0, 0, 0, 0]), lk)
    assert one_jump["dynamic"] is False  # one pair over the threshold is not enough
    two_jumps = flow.dynamic_degree(panning_clip([0, 3, 0, 0, 3, 0, 0]), lk)
    assert two_jumps["dynamic"] is True
    still = flow.dynamic_degree(panning_clip([0] * 7), lk)
    assert still == {"dynamic": False, "flow": pytest.approx(0.0, abs=0.05)}


def test_pair_score_is_the_mean_of_the_largest_five_percent():
    field = torch.zeros(1, 2, 10, 10)
    field[0, 0, 0, :5] = 4.0  # 5 of 100 pixels move 4 px
    field[0, 1, 1, 0] = 100.0  # beyond the top 5%? no: it is the largest, so it is in
    assert flow.pair_scores(field).item() == pytest.approx((100 + 4 * 4) / 5)


def test_without_torchvision_the_fallback_is_named_never_raft(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision.models.optical_flow", None)  # import fails, as beside torch 2.13
    estimator, why = flow.load_flow(torch.device("cpu"))
    assert estimator.name == flow.LUCAS_KANADE and "not RAFT" in estimator.name
    assert why.startswith("RAFT skipped: torchvision does not import")
