"""What a training run records as it goes: per-step losses and drift, validation samples, curves.

metrics.jsonl      one row per step: mse, spl, prior, cosine (concept-class cosine; 1.0 = no drift)
validation/        step-NNNNNN.png still samples of the concept phrase (`--validate-every N`)
curves.png         the loss and drift curves, redrawn at each validation and at the end
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cdvideo.atomic import atomic_path, write_text_atomic

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
VALIDATION_DIR = "validation"
FIELDS = ("mse", "spl", "prior", "cosine")


def read_metrics(folder: Path) -> list[dict]:
    path = Path(folder) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill mid-write
    return rows


class MetricsLog:
    """Every step's values, kept on the device and written in batches: one host sync per flush."""

    def __init__(self, folder: Path, start_step: int):
        self.path = Path(folder) / METRICS_FILE
        # A fresh run starts an empty log; a resumed one keeps the rows up to its checkpoint.
        kept = [r for r in read_metrics(folder) if r.get("step", 0) <= start_step] if start_step else []
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.last: dict = kept[-1] if kept else {}
        self._steps: list[int] = []
        self._values: list[torch.Tensor] = []

    def add(self, step: int, mse: torch.Tensor, spl: torch.Tensor, prior: torch.Tensor, cosine: torch.Tensor) -> None:
        self._steps.append(step)
        self._values.append(torch.stack([v.detach().float().reshape(()) for v in (mse, spl, prior, cosine)]))

    def flush(self) -> dict:
        """Append the buffered rows; returns the newest row."""
        if not self._values:
            return self.last
        values = torch.stack(self._values).tolist()
        rows = [{"step": s, **{k: round(v, 6) for k, v in zip(FIELDS, row)}} for s, row in zip(self._steps, values)]
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
        self._steps, self._values = [], []
        self.last = rows[-1]
        return self.last


@torch.no_grad()
def render_validation(pipe, prompt: str, folder: Path, step: int, resolution: int, steps: int, guidance: float) -> Path:
    """A still of the concept with the weights as they are now; the same seed every time, so samples compare."""
    image = pipe(
        prompt,
        height=resolution,
        width=resolution,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator(pipe.device).manual_seed(0),
    ).images[0]
    path = Path(folder) / VALIDATION_DIR / f"step-{step:06d}.png"
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def _moving_mean(values: list[float], width: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - width] if i >= width else 0.0)
        out.append(total / min(i + 1, width))
    return out


def plot_curves(folder: Path, title: str = "") -> Path | None:
    """Draw metrics.jsonl as curves.png: losses (log scale) above, concept-class cosine below."""
    rows = read_metrics(folder)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, constrained_layout=True)
    for key, label in (("mse", "MSE (subject)"), ("prior", "prior MSE"), ("spl", "SPL")):
        values = [max(r.get(key, 0.0), 1e-8) for r in rows]
        if max(values) <= 1e-8:
            continue
        # Diffusion losses jump with the sampled timestep: the raw steps faint, a moving mean on top.
        line = top.plot(steps, values, linewidth=0.6, alpha=0.35)[0]
        top.plot(steps, _moving_mean(values, max(1, len(values) // 25)), color=line.get_color(), label=label)
    top.set_yscale("log")
    top.set_ylabel("loss")
    top.legend(loc="upper right")
    top.set_title(title or "training")
    bottom.plot(steps, [r.get("cosine", float("nan")) for r in rows], color="tab:purple", linewidth=1)
    bottom.set_ylabel("concept-class cosine (EOS)")
    bottom.set_xlabel("step")
    path = Path(folder) / CURVES_FILE
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
