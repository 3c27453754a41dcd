"""Optical flow between consecutive frames, and VBench's dynamic degree read from it.

VBench (Huang et al., CVPR 2024, `dynamic_degree.py`): RAFT flow for each pair of consecutive frames;
a pair's score is the mean of its largest 5% flow magnitudes; a clip "moves" when at least
round(4 * frames / 16) pairs score above 6 * min(H, W) / 256 pixels. VBench first resamples videos to
about 8 fps; cdvideo's clips are scored at the rate they were rendered (AnimateDiff's 8 fps).

RAFT comes from torchvision (optional; its weights download once). Where it cannot load, a pyramidal
Lucas-Kanade estimator in plain torch stands in, named as such in the report: its magnitudes are close
on textured motion but it is not RAFT, so its dynamic degree is not VBench's number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

RAFT = "RAFT (torchvision raft_large, 20 updates)"
LUCAS_KANADE = "pyramidal Lucas-Kanade (fallback, not RAFT)"
TOP_FRACTION = 0.05
_PAIRS_PER_BATCH = 4


@dataclass
class FlowEstimator:
    name: str
    # (N, 3, H, W) floats in [0, 1], frame pairs -> (N, 2, H, W) flow in pixels (x, y)
    flow: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class FlowUnavailable(Exception):
    """The estimator cannot load here; the message says why in one line."""


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def load_raft(device: torch.device) -> FlowEstimator:
    try:
        from torchvision.models.optical_flow import Raft_Large_Weights, raft_large
    except Exception as err:  # ImportError, or torchvision's compiled ops refusing a mismatched torch
        raise FlowUnavailable(f"torchvision does not import ({_first_line(err)})") from err
    try:
        weights = Raft_Large_Weights.DEFAULT
        model = raft_large(weights=weights, progress=False).to(device).eval()
    except Exception as err:  # offline: the weights download fails with urllib's or torch.hub's errors
        raise FlowUnavailable(f"RAFT weights do not load ({_first_line(err)})") from err
    normalise = weights.transforms()

    @torch.no_grad()
    def flow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h, w = a.shape[-2:]
        # RAFT needs sides divisible by 8; VBench's InputPadder pads by replication too.
        pad = (0, -w % 8, 0, -h % 8)
        a, b = normalise(F.pad(a, pad, mode="replicate"), F.pad(b, pad, mode="replicate"))
        return model(a.to(device), b.to(device), num_flow_updates=20)[-1][..., :h, :w].float().cpu()

    return FlowEstimator(RAFT, flow)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).float()


def _warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """image sampled at x + flow(x)."""
    n, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype), torch.arange(w, dtype=flow.dtype), indexing="ij")
    gx = (xs + flow[:, 0]) / max(w - 1, 1) * 2 - 1
    gy = (ys + flow[:, 1]) / max(h - 1, 1) * 2 - 1
    return F.grid_sample(image, torch.stack([gx, gy], -1), align_corners=True, padding_mode="border")


def _gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    return (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2, (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2


@torch.no_grad()
def lucas_kanade(
    a: torch.Tensor, b: torch.Tensor, levels: int = 5, iterations: int = 5, window: int = 9
) -> torch.Tensor:
    """Dense flow from a to b: Lucas-Kanade least squares over a window, coarse to fine with warping."""
    pyramid = [(_gray(a), _gray(b))]
    while len(pyramid) < levels and min(pyramid[-1][0].shape[-2:]) >= 32:
        pyramid.append(tuple(F.avg_pool2d(x, 2) for x in pyramid[-1]))
    flow = None
    box = torch.ones(1, 1, window, window) / window**2
    for ga, gb in reversed(pyramid):
        if flow is None:
            flow = torch.zeros(ga.shape[0], 2, *ga.shape[-2:])
        else:
            flow = 2 * F.interpolate(flow, size=ga.shape[-2:], mode="bilinear", align_corners=False)
        for _ in range(iterations):
            warped = _warp(gb, flow)
            ax, ay = _gradients(ga)
            wx, wy = _gradients(warped)
            ix, iy, it = (ax + wx) / 2, (ay + wy) / 2, warped - ga

            def window_sum(t: torch.Tensor) -> torch.Tensor:
                return F.conv2d(F.pad(t, (window // 2,) * 4, mode="replicate"), box)

            sxx, sxy, syy = window_sum(ix * ix), window_sum(ix * iy), window_sum(iy * iy)
            sxt, syt = window_sum(ix * it), window_sum(iy * it)
            det = sxx * syy - sxy * sxy
            # Flat or edge-only windows (one small eigenvalue) carry no 2-D motion: leave them be.
            half_trace = (sxx + syy) / 2
            smallest = half_trace - torch.sqrt(((sxx - syy) / 2) ** 2 + sxy**2)
            ok = smallest > 1e-5
            safe = torch.where(ok, det, torch.ones_like(det))
            du = torch.where(ok, (-syy * sxt + sxy * syt) / safe, torch.zeros_like(det))
            dv = torch.where(ok, (sxy * sxt - sxx * syt) / safe, torch.zeros_like(det))
            # Smoothing the update spreads the flow of textured windows into flat, occluded and newly
            # revealed ones, where the least squares alone is ill-posed and diverges.
            flow = _interior(_median_blur(flow + torch.cat([du, dv], 1).clamp(-1, 1)), window // 2)
    return flow


def _interior(flow: torch.Tensor, margin: int) -> torch.Tensor:
    """The border band (where content enters or leaves the frame, and windows leave it) takes the flow of
    the nearest interior pixel: there the least squares has nothing to match and drifts."""
    if min(flow.shape[-2:]) <= 4 * margin:
        return flow
    return F.pad(flow[..., margin:-margin, margin:-margin], (margin,) * 4, mode="replicate")


def _median_blur(x: torch.Tensor, size: int = 5) -> torch.Tensor:
    n, c, h, w = x.shape
    patches = F.unfold(F.pad(x, (size // 2,) * 4, mode="replicate"), size)
    return patches.view(n, c, size * size, h * w).median(2).values.view(n, c, h, w)


def load_flow(device: torch.device) -> tuple[FlowEstimator, str | None]:
    """RAFT where it loads, else the named fallback and why RAFT was skipped."""
    try:
        return load_raft(device), None
    except FlowUnavailable as err:
        return FlowEstimator(LUCAS_KANADE, lucas_kanade), f"RAFT skipped: {err}"


def pair_scores(flow: torch.Tensor) -> torch.Tensor:
    """VBench's per-pair score: mean of the largest 5% flow magnitudes. flow: (P, 2, H, W) -> (P,)."""
    magnitude = flow.norm(dim=1).flatten(1)
    k = max(1, int(magnitude.shape[1] * TOP_FRACTION))
    return magnitude.topk(k, dim=1).values.mean(1)


def thresholds(height: int, width: int, frames: int) -> tuple[float, int]:
    """VBench's (pixel threshold, pairs needed), scaled by the frame size and the clip length."""
    return 6.0 * min(height, width) / 256.0, max(1, round(4 * frames / 16))


def dynamic_degree(frames: np.ndarray, estimator: FlowEstimator) -> dict:
    """Flow over consecutive frames of one (F, H, W, 3) uint8 clip: does it move (VBench), how much."""
    if len(frames) < 2:
        return {"dynamic": False, "flow": 0.0}
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    first, second = x[:-1], x[1:]
    flows = torch.cat(
        [
            estimator.flow(first[i : i + _PAIRS_PER_BATCH], second[i : i + _PAIRS_PER_BATCH])
            for i in range(0, len(first), _PAIRS_PER_BATCH)
        ]
    )
    threshold, needed = thresholds(x.shape[-2], x.shape[-1], len(x))
    moving_pairs = int((pair_scores(flows) > threshold).sum())
    return {"dynamic": moving_pairs >= needed, "flow": float(flows.norm(dim=1).mean())}
