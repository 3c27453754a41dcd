"""`cdvideo ui`: a local web app (Gradio) over the same Python API as the command line.

Tabs: Train (photos or the demo subject -> a concept, with live progress, curves and validation stills),
Animate (prompt -> mp4/gif, showing how the prompt binds to the concept), Evaluate (`cdvideo eval`'s
scorecard and sample sheet), Concepts (the concepts in the workspace with their model cards).
Long work runs in a worker thread while the page polls it; one training run at a time per app.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cdvideo.errors import UserError

POLL_S = 0.5
NO_CONCEPT = "(none: base model alone)"
BUSY = "A training run is already going (one at a time): wait for it to finish."


def require_gradio():
    try:
        import gradio
    except ImportError:
        raise UserError("cdvideo ui needs gradio: pip install 'cdvideo[ui]'") from None
    return gradio


# ---------------------------------------------------------------------------------------------
# Work in a thread: the page stays live, and sees progress and the one-line error of a bad input


@dataclass
class Job:
    """A call running in a worker thread, with what it has said so far."""

    lines: list[str] = field(default_factory=list)
    result: object = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def say(self, message: str) -> None:
        self.lines.append(message)

    def start(self, work: Callable[[Callable[[str], None]], object]) -> Job:
        def run() -> None:
            try:
                self.result = work(self.say)
            except UserError as err:
                self.error = str(err)
            except Exception as err:  # shown in the page as one line, as the CLI would end
                self.error = f"{type(err).__name__}: {err}"
            finally:
                self.done.set()

        threading.Thread(target=run, daemon=True).start()
        return self

    def log(self) -> str:
        text = "\n".join(self.lines[-30:])
        return f"{text}\nerror: {self.error}".strip() if self.error else text


def _wait(job: Job) -> Iterator[None]:
    """Yield every POLL_S until the job ends."""
    while not job.done.wait(POLL_S):
        yield


# ---------------------------------------------------------------------------------------------
# Workspace: where the app's concepts, videos and reports go


@dataclass
class Workspace:
    root: Path
    base: str

    @property
    def concepts(self) -> Path:
        return self.root / "concepts"

    def concept_folders(self) -> list[Path]:
        """Concept folders (a manifest inside) in the workspace, and ./cdvideo-concept."""
        from cdvideo.concept import MANIFEST

        found = sorted(p.parent for p in self.concepts.glob(f"*/{MANIFEST}"))
        local = Path("cdvideo-concept")
        if (local / MANIFEST).is_file() and local.resolve() not in {p.resolve() for p in found}:
            found.append(local)
        return found

    def next_concept_folder(self, class_word: str) -> Path:
        stem = "".join(c if c.isalnum() else "-" for c in class_word.strip().lower()) or "concept"
        n = 1
        while (self.concepts / f"{stem}-{n}").exists():
            n += 1
        return self.concepts / f"{stem}-{n}"


# ---------------------------------------------------------------------------------------------
# Train


TRAIN_LOCK = threading.Lock()


def _photo_paths(files, use_demo: bool, workspace: Workspace) -> list[str]:
    if use_demo:
        from cdvideo.demo import write_subject_photos

        return [str(p) for p in write_subject_photos(workspace.root / "demo-photos")]
    return [str(f if isinstance(f, str) else f.name) for f in files or []]


def train_config(ws: Workspace, files, use_demo, class_word, output, steps, resolution, prior, spl, seed, memory):
    """The TrainConfig the page's fields describe (blank fields: the base model family's defaults)."""
    from cdvideo.training import TrainConfig

    images = _photo_paths(files, use_demo, ws)
    if not images:
        raise UserError("no photos: drop 3-20 photos of your subject, or tick 'use the demo subject'")
    number = lambda v, kind: kind(v) if v not in (None, "") else None  # noqa: E731
    return TrainConfig(
        images=images,
        class_word="circle" if use_demo and not class_word.strip() else class_word,
        base=ws.base,
        output=output.strip() or str(ws.next_concept_folder(class_word or "circle")),
        steps=number(steps, int),
        resolution=number(resolution, int),
        prior_weight=number(prior, float),
        spl_weight=number(spl, float),
        seed=int(seed or 0),
        mixed_precision="bf16" if "bf16" in memory else "no",
        gradient_checkpointing="gradient checkpointing" in memory,
    )


def _curves(folder: Path):
    """metrics.jsonl as a long table for a line plot: step, value, series."""
    import pandas as pd

    from cdvideo.tracking import read_metrics

    rows = [
        {"step": r["step"], "value": r[key], "series": name}
        for r in read_metrics(folder)
        for key, name in (("mse", "MSE"), ("spl", "SPL"), ("prior", "prior MSE"), ("cosine", "drift (cosine)"))
        if key in r
    ]
    return pd.DataFrame(rows, columns=["step", "value", "series"])


def _stills(folder: Path) -> list[tuple[str, str]]:
    from cdvideo.tracking import VALIDATION_DIR

    return [(str(p), p.stem) for p in sorted((folder / VALIDATION_DIR).glob("step-*.png"))]


def run_training(ws: Workspace, *fields, progress=None) -> Iterator[tuple]:
    """Train from the page's fields; yields (status, log, curves, stills) as the run goes."""
    import cdvideo

    if not TRAIN_LOCK.acquire(blocking=False):
        yield BUSY, "", None, []
        return
    try:
        try:
            cfg = train_config(ws, *fields)
        except UserError as err:
            yield f"error: {err}", "", None, []
            return
        out, total, steps_done = Path(cfg.output), cfg.resolved().steps, [0]
        count = lambda models: steps_done.__setitem__(0, steps_done[0] + 1)  # noqa: E731
        job = Job().start(lambda say: cdvideo.train(cfg, say=say, progress=False, after_backward=count))
        for _ in _wait(job):
            if progress is not None:
                progress(steps_done[0] / max(total, 1), desc=f"step {steps_done[0]} of {total}")
            yield f"training: step {steps_done[0]} of {total}", job.log(), _curves(out), _stills(out)
        status = f"error: {job.error}" if job.error else f"done: concept written to {job.result}"
        yield status, job.log(), _curves(out), _stills(out)
    finally:
        TRAIN_LOCK.release()


# ---------------------------------------------------------------------------------------------
# Animate


def _concept(choice: str | None):
    from cdvideo.concept import load_concept

    if not choice or choice == NO_CONCEPT:
        return None
    return load_concept(choice)


def binding(prompt: str, choice: str | None) -> str:
    """How the prompt reaches the model: 'a dog running' -> 'a <new1> dog running' (or why it will not)."""
    from cdvideo.prompts import bind_prompt

    if not prompt.strip():
        return ""
    try:
        concept = _concept(choice)
    except UserError as err:
        return f"error: {err}"
    if concept is None:
        return f"renders as: `{prompt}` (no concept)"
    bound, warning = bind_prompt(prompt, concept.token, concept.class_word)
    return f"renders as: `{bound}`" + (f"\n\nwarning: {warning}" if warning else "")


def animate_config(ws: Workspace, prompt, choice, seed, motion_adapter, motion_lora, sampler, frames, steps, guidance):
    from cdvideo.rendering import AnimateConfig

    number = lambda v, kind: kind(v) if v not in (None, "") else None  # noqa: E731
    use_concept = bool(choice) and choice != NO_CONCEPT
    return AnimateConfig(
        prompts=[prompt],
        concept=choice if use_concept else None,
        use_concept=use_concept,
        base=None if use_concept else ws.base,
        seeds=[int(seed or 0)],
        motion_adapter=motion_adapter.strip() or None,
        motion_loras=[motion_lora.strip()] if motion_lora.strip() else [],
        sampler=sampler,
        frames=number(frames, int),
        steps=number(steps, int),
        guidance=number(guidance, float),
        output=str(ws.root / "videos"),
    )


def run_animation(ws: Workspace, *fields) -> Iterator[tuple]:
    """Render from the page's fields; yields (status, log, mp4, gif, files)."""
    import cdvideo

    try:
        cfg = animate_config(ws, *fields)
    except UserError as err:
        yield f"error: {err}", "", None, None, []
        return
    start = time.time()
    job = Job().start(lambda say: cdvideo.animate(cfg, say=say, progress=False))
    for _ in _wait(job):
        yield f"rendering... {time.time() - start:.0f} s", job.log(), None, None, []
    if job.error:
        yield f"error: {job.error}", job.log(), None, None, []
        return
    files = job.result[0].files
    done = f"done in {time.time() - start:.0f} s: {files['mp4']}"
    yield done, job.log(), str(files["mp4"]), str(files["gif"]), [str(files["mp4"]), str(files["gif"])]


# ---------------------------------------------------------------------------------------------
# Evaluate


def run_evaluation(ws: Workspace, choice, seeds, frames, steps, clip, dino, blip) -> Iterator[tuple]:
    """`cdvideo eval` on a concept; yields (status, report markdown, sample sheets)."""
    from cdvideo.evaluation import EvalConfig, evaluate

    if not choice or choice == NO_CONCEPT:
        yield "error: pick a concept to evaluate", "", []
        return
    out = ws.root / "eval" / Path(choice).name
    number = lambda v: int(v) if v not in (None, "") else None  # noqa: E731
    try:
        seed_list = [int(s) for s in str(seeds or "0").replace(",", " ").split()]
    except ValueError:
        yield f"error: seeds must be whole numbers separated by spaces (got {seeds!r})", "", []
        return
    cfg = EvalConfig(concept=choice, output=str(out), seeds=seed_list, frames=number(frames), steps=number(steps),
                     clip=clip.strip() or "none", dino=dino.strip() or "none", blip=blip.strip() or "none")  # fmt: skip
    start = time.time()
    job = Job().start(lambda say: evaluate(cfg, say=say))
    for _ in _wait(job):
        yield f"evaluating... {time.time() - start:.0f} s\n{job.log()}", "", []
    if job.error:
        yield f"error: {job.error}", "", []
        return
    report = (out / "report.md").read_text(encoding="utf-8")
    sheets = [(str(p), p.parent.name) for p in sorted(out.rglob("contact-sheet.png"))]
    yield f"done in {time.time() - start:.0f} s: {out}", report, sheets


# ---------------------------------------------------------------------------------------------
# Concepts


def concept_table(ws: Workspace) -> list[list]:
    from cdvideo.concept import load_concept

    rows = []
    for folder in ws.concept_folders():
        try:
            c = load_concept(folder)
        except UserError:
            continue
        rows.append([str(folder), c.token, c.class_word, c.base, c.steps, c.drift])
    return rows


def model_card(choice: str | None) -> tuple[str, str | None]:
    if not choice or choice == NO_CONCEPT:
        return "", None
    folder = Path(choice)
    card = folder / "README.md"
    curves = folder / "curves.png"
    text = card.read_text(encoding="utf-8") if card.is_file() else f"{folder} has no model card"
    return text, str(curves) if curves.is_file() else None


# ---------------------------------------------------------------------------------------------
# The page


def _choices(ws: Workspace, with_none: bool) -> list[str]:
    return ([NO_CONCEPT] if with_none else []) + [str(p) for p in ws.concept_folders()]


def _newest(ws: Workspace) -> str | None:
    """The most recently written concept: what a user who just trained wants to animate."""
    from cdvideo.concept import MANIFEST

    folders = ws.concept_folders()
    return str(max(folders, key=lambda p: (p / MANIFEST).stat().st_mtime)) if folders else None


def _train_tab(gr, ws: Workspace):
    """The Train tab; returns its click event (the other tabs' concept lists refresh after it)."""
    with gr.Row():
        with gr.Column():
            photos = gr.File(
                label="photos of your subject (3-20)",
                file_count="multiple",
                file_types=["image"],
                elem_id="train-photos",
            )
            use_demo = gr.Checkbox(label="use the demo subject (Shapes' striped circle)", value=False)
            class_word = gr.Textbox(label="class word", placeholder="dog", elem_id="train-class")
            with gr.Accordion("settings (blank: the base model family's defaults)", open=False):
                output = gr.Textbox(label="concept folder (blank: a new one in the workspace)")
                steps = gr.Textbox(label="steps", elem_id="train-steps")
                resolution = gr.Textbox(label="resolution (px)")
                prior = gr.Textbox(label="prior preservation weight (0 = off)", elem_id="train-prior")
                spl = gr.Textbox(label="SPL weight (0 = off)")
                seed = gr.Number(label="seed", value=0, precision=0)
                memory = gr.CheckboxGroup(["bf16", "gradient checkpointing"], label="memory options")
            button = gr.Button("Train", variant="primary", elem_id="train-button")
            gr.Markdown("One training run at a time: a second click while one runs is refused, not queued.")
        with gr.Column():
            status = gr.Textbox(label="status", elem_id="train-status")
            curves = gr.LinePlot(x="step", y="value", color="series", label="MSE / SPL / drift", height=260)
            stills = gr.Gallery(label="validation stills", columns=4, height=200)
            log = gr.Textbox(label="log", lines=6)
    fields = [photos, use_demo, class_word, output, steps, resolution, prior, spl, seed, memory]

    def train(*values, progress=gr.Progress()):
        if TRAIN_LOCK.locked():
            gr.Warning(BUSY)  # a toast: the running job keeps the status box and curves
            yield (gr.skip(),) * 4
            return
        yield from run_training(ws, *values, progress=progress)

    # A second click reaches the lock at once (no queue, no ignored clicks) and is told a run is going.
    outputs = [status, log, curves, stills]
    return button.click(train, fields, outputs, concurrency_limit=None, trigger_mode="multiple")


def _animate_tab(gr, ws: Workspace, pickers: list) -> None:
    from cdvideo.presets import SAMPLERS

    with gr.Row():
        with gr.Column():
            example = "a circle wearing headphones moving right" if ws.base == "shapes" else "a dog running"
            prompt = gr.Textbox(label="prompt", value=example, elem_id="animate-prompt")
            concept = gr.Dropdown(_choices(ws, True), label="concept", value=(_choices(ws, True) + [None])[1])
            bound = gr.Markdown(elem_id="binding")
            with gr.Row():
                seed = gr.Number(label="seed", value=0, precision=0)
                sampler = gr.Dropdown(["default", *SAMPLERS], value="default", label="sampler")
            motion_adapter = gr.Textbox(label="motion adapter (blank: the family's)")
            motion_lora = gr.Textbox(label="motion LoRA, PATH[:WEIGHT] (optional)")
            with gr.Row():
                frames = gr.Textbox(label="frames", elem_id="animate-frames")
                steps = gr.Textbox(label="steps", elem_id="animate-steps")
                guidance = gr.Textbox(label="guidance")
            button = gr.Button("Animate", variant="primary", elem_id="animate-button")
        with gr.Column():
            status = gr.Textbox(label="status", elem_id="animate-status")
            video = gr.Video(label="mp4", autoplay=True, loop=True, elem_id="animate-video")
            gif = gr.Image(label="gif", type="filepath")
            files = gr.File(label="downloads", file_count="multiple")
            log = gr.Textbox(label="log", lines=4)
    pickers.append((concept, True))
    for trigger in (prompt.change, concept.change):
        trigger(binding, [prompt, concept], bound)
    fields = [prompt, concept, seed, motion_adapter, motion_lora, sampler, frames, steps, guidance]

    def animate(*values):
        yield from run_animation(ws, *values)

    button.click(animate, fields, [status, log, video, gif, files])


def _evaluate_tab(gr, ws: Workspace, pickers: list) -> None:
    offline = ws.base == "shapes"  # the Shapes world's exact scorer needs no backbone download
    from cdvideo.evaluation import BLIP_ID, CLIP_ID, DINO_ID

    with gr.Row():
        with gr.Column():
            concept = gr.Dropdown(_choices(ws, False), label="concept")
            seeds = gr.Textbox(label="seeds", value="0")
            with gr.Row():
                frames = gr.Textbox(label="frames")
                steps = gr.Textbox(label="steps")
            with gr.Accordion("backbones (hub id or local folder; blank = skip)", open=not offline):
                clip = gr.Textbox(label="CLIP", value="" if offline else CLIP_ID)
                dino = gr.Textbox(label="DINO", value="" if offline else DINO_ID)
                blip = gr.Textbox(label="BLIP", value="" if offline else BLIP_ID)
            button = gr.Button("Evaluate", variant="primary")
        with gr.Column():
            status = gr.Textbox(label="status", lines=3)
            report = gr.Markdown()
            sheets = gr.Gallery(label="sample sheets (rows: prompts, columns: seeds)", columns=1)
    pickers.append((concept, False))
    fields = [concept, seeds, frames, steps, clip, dino, blip]

    def evaluate(*values):
        yield from run_evaluation(ws, *values)

    button.click(evaluate, fields, [status, report, sheets])


def _concepts_tab(gr, ws: Workspace, pickers: list) -> None:
    headers = ["folder", "token", "class word", "base", "steps", "concept-class cosine"]
    table = gr.Dataframe(
        concept_table(ws),
        headers=headers,
        label="concepts in the workspace",
        interactive=False,
        elem_id="concept-table",
    )
    with gr.Row():
        concept = gr.Dropdown(_choices(ws, False), label="concept")
        refresh = gr.Button("Refresh")
    with gr.Row():
        card = gr.Markdown(elem_id="concept-card")
        curves = gr.Image(label="training curves", type="filepath")
    pickers.append((concept, False))
    concept.change(model_card, concept, [card, curves])
    refresh.click(lambda: (concept_table(ws), gr.update(choices=_choices(ws, False))), None, [table, concept])


def build_app(workspace: str | Path = "cdvideo-ui", base: str = "shapes"):
    """The page: four tabs over cdvideo.train / animate / evaluation, working in `workspace`."""
    gr = require_gradio()
    ws = Workspace(Path(workspace), base)
    ws.concepts.mkdir(parents=True, exist_ok=True)
    pickers: list = []  # concept dropdowns, refreshed when a training run ends
    with gr.Blocks(title="cdvideo") as app:
        gr.Markdown(f"## cdvideo: personalized text-to-video\nbase model `{base}`, workspace `{ws.root}`")
        with gr.Tabs():
            with gr.Tab("Train", id="train"):
                trained = _train_tab(gr, ws)
            with gr.Tab("Animate", id="animate"):
                _animate_tab(gr, ws, pickers)
            with gr.Tab("Evaluate", id="evaluate"):
                _evaluate_tab(gr, ws, pickers)
            with gr.Tab("Concepts", id="concepts"):
                _concepts_tab(gr, ws, pickers)
        for picker, with_none in pickers:
            trained.then(lambda w=with_none: gr.update(choices=_choices(ws, w), value=_newest(ws)), None, picker)
    return app


def launch(workspace: str = "cdvideo-ui", base: str = "shapes", host: str = "127.0.0.1", port: int | None = None,
           open_browser: bool = False) -> None:  # fmt: skip
    """Serve the page until interrupted."""
    from cdvideo.cli import _quiet_libraries

    app = build_app(workspace, base)
    _quiet_libraries()
    print(f"cdvideo ui: base {base}, workspace {workspace}; Ctrl+C stops it", flush=True)
    app.queue().launch(server_name=host, server_port=port, inbrowser=open_browser, allowed_paths=[str(Path(workspace))])
