"""`cdvideo eval`'s report: summaries over seeds and prompts, and the Markdown tables (JSON is the dict)."""

from __future__ import annotations

from cdvideo.backbones import USES
from cdvideo.metrics import SCORE_KEYS, SHAPES_RATES

REPORT = "report"
AXIS_NAMES = {
    "dino_i": "DINO-I (mean)",
    "clip_t": "CLIP-T (mean)",
    "subject": "subject rate (world scorer)",
    "composition": "composition rate (world scorer)",
}


def mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def rounded(d: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def summarise(rows: list[dict], key: str) -> dict:
    out = {}
    for k in SCORE_KEYS:
        values = [r[key][k] for r in rows if r[key][k] is not None]
        out[k] = (round(min(values), 4) if values else None) if k.endswith("_worst") else mean(values)
    return out


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(fmt(c) for c in row) + " |" for row in rows),
    ]


def skipped_lines(report: dict) -> list[str]:
    """'skipped X: why' for every backbone and estimator the report had to do without."""
    return [f"{name}: {why}" for name, why in report["skipped"].items()]


def report_markdown(report: dict) -> str:
    o = report["overall"]
    lines = [
        f"# cdvideo eval: {report['token']} {report['class_word']}",
        "",
        f"Concept `{report['concept']}` (base `{report['base']}`, {report['steps']} steps, SPL weight "
        f"{report['spl_weight']}, prior weight {report['prior_weight']}); {report['photos']} photos; "
        f"seeds {report['seeds']}; {o['videos']} videos, {o['videos_flagged']} flagged, "
        f"{o['videos_moving_less']} moving less than the base model's.",
        "",
        "Backbone scores are raw cosines in [-1, 1]. Base = the base model's video for the same prompt with "
        "the class word alone and the same seed.",
        "",
        *table(
            ["metric", "backbone", "image size"],
            [[USES[k], b["id"], b["image_size"]] for k, b in report["backbones"].items()],
        ),
        "",
        f"Flow (dynamic degree, flow): {report['flow_estimator'] or 'not measured on this family'}.",
    ]
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(skipped_lines(report)) + "."]
    lines += [
        "",
        "## Overall",
        "",
        *table(
            ["", *SCORE_KEYS],
            [["concept", *(o["scores"][k] for k in SCORE_KEYS)], ["base", *(o["base"][k] for k in SCORE_KEYS)]],
        ),
        "",
        f"Drift (concept-class cosine, EOS): {fmt(o['drift'])} for the training phrase, "
        f"{fmt(o['prompt_drift'])} mean over prompts. Motion vs base: {fmt(o['motion_ratio'])}x.",
    ]
    if "shapes" in o:
        lines += [
            "",
            "World scorer (rates; base = the class word alone, the ceiling for composition):",
            "",
            *table(
                ["", *SHAPES_RATES],
                [
                    ["concept", *(o["shapes"][k] for k in SHAPES_RATES)],
                    ["base", *(o["base_shapes"][k] for k in SHAPES_RATES)],
                ],
            ),
        ]
    header = ["category", "prompt", "CLIP-I", "worst", "DINO-I", "worst", "CLIP-T", "BLIP-T", "frame c.", "subj. c."]
    header += ["dynamic", "flow", "motion x base", "moves less", "drift", "flags"]
    body = []
    for r in report["prompts"]:
        s = r["scores"]
        body.append(
            [r["category"], r["prompt"], s["clip_i"], s["clip_i_worst"], s["dino_i"], s["dino_i_worst"], s["clip_t"]]
            + [s["blip_t"], s["frame_consistency"], s["subject_consistency"], s["dynamic"], s["flow"]]
            + [r["motion_ratio"], f"{r['moving_less']}/{len(r['videos'])}", r["drift"]]
            + [", ".join(r["flags"]) or "ok"]
        )
    lines += ["", "## Per prompt", "", *table(header, body)]
    if "shapes" in o:
        body = [[r["prompt"], *(r["shapes"][k] for k in SHAPES_RATES)] for r in report["prompts"]]
        lines += ["", "World scorer per prompt (rates over seeds):", "", *table(["prompt", *SHAPES_RATES], body)]
    lines += ["", "Rules: " + "; ".join(f"{k}: {v}" for k, v in report["rules"].items()), ""]
    return "\n".join(lines)


def checkpoints_markdown(summary: dict) -> str:
    entries = summary["checkpoints"]
    extra = [k for k in ("subject", "composition") if k in entries[0]]
    header = ["checkpoint", "CLIP-I", "DINO-I", "CLIP-T", "BLIP-T", "drift", *extra, "flagged", "front", "best"]
    rows = [
        [e["name"], e["clip_i"], e["dino_i"], e["clip_t"], e["blip_t"], e["drift"]]
        + [e[k] for k in extra]
        + [e["flagged"], "●" if e["pareto"] else "", "★" if e["best"] else ""]
        for e in entries
    ]
    return "\n".join(
        [
            f"# cdvideo eval --checkpoints {summary['run']}",
            "",
            f"Identity: {summary['axes']['identity']}; prompt following: {summary['axes']['prompt following']}. "
            f"● = on the Pareto front; ★ = {summary['rule']}. Per-checkpoint reports: <checkpoint>/report.md.",
            "",
            *table(header, rows),
            "",
        ]
    )
