"""Command line: a thin layer over `cdvideo.train`, `animate`, `export_concept`, `push`, `demo` and `ui`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cdvideo.atomic import destination_full
from cdvideo.errors import UserError
from cdvideo.presets import DEMO_RECIPE, RECIPES, SAMPLERS


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="teach a model your subject from 3-20 photos")
    p.add_argument("images", nargs="+", help="photo files or folders")
    p.add_argument("--class-word", required=True, help="the subject's class, e.g. dog")
    p.add_argument(
        "--base",
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        help="hub id, local diffusers folder, single .safetensors file, or 'shapes'",
    )
    p.add_argument("--base-config", help="local diffusers config folder for a single-file --base (no download)")
    p.add_argument("--output", default="cdvideo-concept")
    p.add_argument("--token", default="<new1>")
    p.add_argument("--init-word", help="word whose embedding the token starts from (default: the class word)")
    p.add_argument("--steps", type=int)
    p.add_argument("--resolution", type=int)
    p.add_argument("--rank", type=int)
    p.add_argument("--alpha", type=float, help="LoRA alpha (default: rank)")
    p.add_argument(
        "--lora-targets",
        nargs="+",
        metavar="MODULE",
        help="UNet modules the LoRA adapts, by name suffix (default: preset's; e.g. attn2.to_k attn2.to_v "
        "for cross-attention K/V only, as Custom Diffusion and ClassDiffusion train)",
    )
    p.add_argument("--lora-lr", type=float)
    p.add_argument("--token-lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--spl-weight", type=float, help="semantic preservation loss weight (0 = off; default: preset's)")
    p.add_argument(
        "--spl-pooling",
        choices=["eos", "token"],
        help="where SPL reads each phrase: eos (default) or token (the official ClassDiffusion code's argmax)",
    )
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="classdiffusion: the official code's recipe (full cross-attention K/V, token from 'ktn', lr 1e-5 x "
        "batch x processes, batch 2, 500 steps, SPL 1 at the token, no prior); composites (Shapes): scene "
        "composites with the base model as the prior's teacher, 300 steps: composes, costs plain prompts; "
        "options given still win",
    )
    p.add_argument("--finetune", choices=["lora", "full"], help="train a LoRA (default) or the targets' own weights")
    p.add_argument("--max-grad-norm", type=float, help="clip the gradient norm (default: no clipping)")
    p.add_argument("--no-flip", dest="flip", action="store_false", help="no horizontal-flip augmentation")
    p.add_argument(
        "--masked-loss",
        action=argparse.BooleanOptionalAction,
        help="teach only the subject, masked by each photo's transparency (default: when every photo has it)",
    )
    p.add_argument(
        "--caption-variety",
        type=float,
        metavar="SHARE",
        help="share of subject captions given a composition phrase after the class word; needs masked photos "
        "(default: preset's)",
    )
    p.add_argument(
        "--context-weight",
        type=float,
        metavar="W",
        help="masked photos: weight of matching the base model's class prediction around the subject (0 = off; "
        "default: preset's)",
    )
    p.add_argument(
        "--composites",
        type=float,
        metavar="SHARE",
        help="masked photos: share of subject items that are the subject fitted into the base model's scenes of "
        "its class with an accessory or background (0 = off; default: preset's)",
    )
    p.add_argument("--num-composites", type=int, metavar="N", help="scenes the base model draws for them")
    p.add_argument(
        "--clip-composites",
        type=float,
        metavar="WEIGHT",
        help="masked photos: weight of a loss on the subject fitted into the base video model's clips, taught "
        "through the frozen motion modules so the concept keeps the clip moving (0 = off; default: preset's)",
    )
    p.add_argument("--num-clip-composites", type=int, metavar="N", help="clips the base video model draws for them")
    p.add_argument(
        "--bare-clip-motions",
        action="store_true",
        default=None,
        help="clip composites also show the bare class in every motion (default: off)",
    )
    p.add_argument(
        "--clip-every",
        type=int,
        metavar="N",
        help="teach a clip composite every N steps at N x its weight (faster; default 1: every step)",
    )
    p.add_argument("--prior-weight", type=float, help="prior preservation weight (0 = off; default: preset's)")
    p.add_argument(
        "--prior-target",
        choices=("images", "base"),
        help="prior items learn their own noise (images, DreamBooth) or the base model's prediction (base; "
        "then any prior caption is paired with any prior image)",
    )
    p.add_argument("--class-images", help="folder of class images (default: generated by the base model)")
    p.add_argument("--num-class-images", type=int, help="class images to generate (default: preset's)")
    p.add_argument(
        "--class-prompt",
        dest="class_prompts",
        action="append",
        help="prompt for generated class images, repeatable (default: 'a photo of a CLASS'; the Shapes preset "
        "adds other classes and colours)",
    )
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N")
    p.add_argument("--keep-checkpoints", type=int, default=2, metavar="K", help="newest K kept (0 = all)")
    p.add_argument("--validate-every", type=int, default=0, metavar="N", help="validation still every N steps")
    p.add_argument("--validation-prompt", help="default: 'a photo of a <token> <class>'")
    p.add_argument("--validation-steps", type=int, help="sampler steps per validation still")
    p.add_argument("--resume", help="'latest' or a checkpoint folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--gradient-accumulation", type=int, metavar="N", help="batches per optimizer step (default 1)")
    p.add_argument(
        "--mixed-precision", choices=["no", "fp16", "bf16"], help="autocast, frozen weights stored in it (default no)"
    )
    g = p.add_argument_group("memory (8 GB GPU: --mixed-precision fp16 --gradient-checkpointing --optimizer adamw8bit)")
    g.add_argument("--gradient-checkpointing", action="store_true", default=None, help="recompute UNet activations")
    g.add_argument("--optimizer", choices=["adamw", "adamw8bit"], help="adamw8bit: bitsandbytes, 8-bit state")
    g.add_argument("--cache-latents", action="store_true", default=None, help="keep class-image latents on disk")


def _animate_parser(sub) -> None:
    p = sub.add_parser("animate", help="render a (personalized) video with AnimateDiff")
    p.add_argument("prompts", nargs="*", metavar="PROMPT")
    p.add_argument("--prompt-file", help="YAML file: prompts plus any of these settings")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--concept", help="concept folder (default: ./cdvideo-concept if present)")
    group.add_argument("--no-concept", action="store_true", help="render the base model alone")
    p.add_argument("--base", help="default: the concept's base model, else SD1.5")
    p.add_argument("--base-config")
    p.add_argument("--motion-adapter", help="diffusers folder or hub id, or an original mm_*.ckpt/.safetensors file")
    p.add_argument("--motion-adapter-config", help="diffusers MotionAdapter folder giving a single file's architecture")
    p.add_argument(
        "--motion-lora",
        action="append",
        dest="motion_loras",
        metavar="PATH[:WEIGHT]",
        help="motion LoRA (camera pan/zoom) file, folder or hub id; repeatable",
    )
    p.add_argument(
        "--motion",
        help="where the subject moves: left, right, up, down, zoom-in, zoom-out, roll-clockwise, roll-anticlockwise "
        "(or camera words: pan-left = right); wins over the prompt's words ('moving right'); none = no motion LoRA",
    )
    p.add_argument("--motion-weight", type=float, help="weight of --motion's LoRA (default: the family's, 1.0)")
    p.add_argument("--motion-lora-dir", help="local copies of the family's motion LoRAs (README: Motion)")
    p.add_argument(
        "--sampler",
        choices=["default", *SAMPLERS],
        help="default: the family's (DDIM); lightning: Euler, trailing, 4 steps, guidance 1",
    )
    p.add_argument("--negative-prompt")
    p.add_argument("--frames", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--seed", type=int, nargs="+", dest="seeds", help="one or more seeds")
    p.add_argument("--fps", type=int)
    p.add_argument(
        "--lora-scale", type=float, help="the concept's LoRA weight (default: what its recipe recommends, else 1)"
    )
    p.add_argument(
        "--concept-schedule",
        metavar="SCALE:SHARE",
        help="the concept's LoRA at weight SCALE for the first SHARE of the steps, then at --lora-scale "
        "(e.g. 0.4:0.5: layout and motion come from the base model, appearance from the concept); class:SHARE "
        "renders the prompt without the concept's token (LoRA off) for the first SHARE, then with it; "
        "default: what its recipe recommends; none: one weight throughout",
    )
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help=PRECISION_HELP)
    p.add_argument("--output")
    p.add_argument("--device")
    _render_controls(p)


PRECISION_HELP = (
    "default fp16 on a GPU, fp32 on the CPU, bf16 for the Shapes world on a CPU with bf16 units (AMX or AVX512-BF16)"
)


def _render_controls(p) -> None:
    g = p.add_argument_group("memory and speed")
    g.add_argument("--decode-chunk-size", type=int, help="frames per VAE decode (default 16; 1 = VAE slicing)")
    g.add_argument(
        "--context-length",
        type=int,
        help="FreeNoise sliding windows of N frames (default: on, at the adapter's length, for longer clips)",
    )
    g.add_argument("--context-stride", type=int, help="frames between window starts (default 4)")
    g.add_argument("--forward-chunk", type=int, metavar="N", help="run UNet feed-forward layers N rows at a time")
    g.add_argument("--cpu-offload", action="store_true", default=None, help="keep one model at a time on the GPU")
    g.add_argument("--channels-last", action="store_true", default=None, help="channels-last memory layout")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the UNet (slow first step)")


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a concept for AUTOMATIC1111/ComfyUI (kohya LoRA, embedding) or diffusers")
    p.add_argument("concept", help="concept folder")
    p.add_argument("--format", required=True, choices=["kohya", "a1111", "diffusers"])
    p.add_argument("--output", help="file (.safetensors) or folder (default: CONCEPT/exports/...)")


def _push_parser(sub) -> None:
    p = sub.add_parser("push", help="upload a concept folder (with its model card) to the Hugging Face Hub")
    p.add_argument("concept", help="concept folder")
    p.add_argument("--repo-id", required=True, help="USER/NAME")
    p.add_argument("--private", action="store_true")


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="score a concept's videos: identity, prompt following, motion, drift")
    p.add_argument("concept", nargs="?", metavar="CONCEPT", help="concept folder")
    p.add_argument("--checkpoints", metavar="RUN_DIR", help="score the saved checkpoints of a training run instead")
    p.add_argument("--prompts", help="YAML prompt set (default: configs/eval/dreambench.yaml, or shapes.yaml)")
    p.add_argument("--videos", metavar="DIR", help="read videos `cdvideo animate` wrote here; render the rest")
    p.add_argument("--output", default="cdvideo-eval")
    p.add_argument("--seed", type=int, nargs="+", dest="seeds", help="one or more seeds (default 0)")
    p.add_argument("--frames", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--motion-adapter")
    p.add_argument("--base-config")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help=PRECISION_HELP)
    p.add_argument("--device")
    # Defaults live in cdvideo.backbones; importing it here would load torch. On --base shapes concepts a
    # default that is not on this machine is skipped and named; a named one must load.
    p.add_argument("--clip", help="CLIP hub id or local folder (default openai/clip-vit-base-patch32; none = skip)")
    p.add_argument("--dino", help="DINO (ViT or DINOv2) hub id or local folder (default facebook/dino-vits16)")
    p.add_argument("--blip", help="BLIP retrieval hub id or local folder (default Salesforce/blip-itm-large-coco)")


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="offline end-to-end demo on the embedded Shapes model")
    p.add_argument("--output", default="cdvideo-demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--recipe",
        choices=[*sorted(RECIPES), "none"],
        default=DEMO_RECIPE,
        help=f"train the demo's concept with this recipe (see train; default {DEMO_RECIPE}); none: the family's "
        "plain defaults, faster, with the subject's pattern only in the bare prompt",
    )


def _ui_parser(sub) -> None:
    p = sub.add_parser("ui", help="local web app: train, animate, evaluate, concepts (pip install 'cdvideo[ui]')")
    p.add_argument("--base", default="shapes", help="base model for new concepts (default: the embedded Shapes model)")
    p.add_argument("--workspace", default="cdvideo-ui", help="folder for the app's concepts, videos and reports")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, help="default: 7860, or the next free port")
    p.add_argument("--open", dest="open_browser", action="store_true", help="open it in the default browser")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdvideo", description="Personalized text-to-video (ClassDiffusion + AnimateDiff)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _animate_parser(sub)
    _export_parser(sub)
    _push_parser(sub)
    _eval_parser(sub)
    _demo_parser(sub)
    _ui_parser(sub)
    return parser


def _read_prompt_file(path: str) -> dict:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise UserError(f"prompt file {path} not found")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"prompt file {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if isinstance(data, list):
        data = {"prompts": data}
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), list):
        raise UserError(f"prompt file {path} needs a 'prompts:' list")
    return data


def _quiet_libraries() -> None:
    """Loading bars and library chatter would bury the one line a user needs to read."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _run(args: argparse.Namespace) -> None:
    import cdvideo

    _quiet_libraries()

    values = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    if args.command == "train":
        cdvideo.train(cdvideo.TrainConfig(**values))
    elif args.command == "animate":
        settings = _read_prompt_file(values.pop("prompt_file")) if "prompt_file" in values else {}
        prompts = values.pop("prompts", []) or []
        settings["prompts"] = list(settings.get("prompts", [])) + prompts
        if settings.get("seed") is not None:
            settings["seeds"] = [settings.pop("seed")]
        if values.pop("no_concept", False):
            values["use_concept"] = False
        fields = cdvideo.AnimateConfig.__dataclass_fields__
        unknown = sorted(set(settings) - set(fields))
        if unknown:
            raise UserError(f"prompt file has unknown settings {unknown}; known: {sorted(fields)}")
        cdvideo.animate(cdvideo.AnimateConfig(**{**settings, **values}))
    elif args.command == "export":
        for path in cdvideo.export_concept(args.concept, args.format, args.output):
            print(f"wrote {path}")
    elif args.command == "push":
        cdvideo.push(args.concept, args.repo_id, private=args.private)
    elif args.command == "eval":
        from cdvideo.evaluation import EvalConfig, evaluate

        evaluate(EvalConfig(**values))
    elif args.command == "demo":
        cdvideo.demo(output=args.output, seed=args.seed, recipe=args.recipe)
    elif args.command == "ui":
        from cdvideo.ui import launch

        launch(**values)


def _end_progress_bars() -> None:
    """Close bars an error interrupted, so the error gets a line of its own rather than the bar's tail."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    try:
        try:
            _run(args)
        finally:
            _end_progress_bars()
    except UserError as err:
        print(f"cdvideo: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cdvideo: interrupted; finished outputs are intact (train: --resume latest)", file=sys.stderr)
        return 130
    except Exception as err:
        # Writes outside atomic_path (logs) can hit a full disk too: still one line, not a traceback.
        full = destination_full(err)
        if full is None:
            raise
        where = full.filename or "an output file"
        print(f"cdvideo: error: cannot write {where}: {full.strerror}; free some space", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
