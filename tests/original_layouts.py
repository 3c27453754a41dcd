"""Diffusers weights written back in the original layouts people download (test fixtures).

`ldm_checkpoint`: a community single-file SD1 checkpoint (`model.diffusion_model.`,
`first_stage_model.`, `cond_stage_model.transformer.` keys), generalised from diffusers'
scripts/convert_diffusers_to_original_stable_diffusion.py to any block count and depth.
`animatediff_motion_module`: an original `mm_sd_v15_v2`-style motion-module file.
"""

from __future__ import annotations

import re

import torch


def _rename(state: dict, pairs: list[tuple[str, str]]) -> dict:
    renamed = {}
    for key, value in state.items():
        for ours, theirs in pairs:
            if key.startswith(ours):
                key = theirs + key[len(ours) :]
                break
        renamed[key] = value
    return renamed


def _unet_to_ldm(unet) -> dict:
    cfg = unet.config
    per = cfg.layers_per_block + 1  # ldm counts the downsampler as one more input block
    n = len(cfg.block_out_channels)
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for i in range(n):
        for j in range(cfg.layers_per_block):
            pairs += [
                (f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{per * i + j + 1}.0."),
                (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{per * i + j + 1}.1."),
            ]
        pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{per * (i + 1)}.0.op."))
        for j in range(per):
            pairs += [
                (f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{per * i + j}.0."),
                (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{per * i + j}.1."),
            ]
        has_attention = "CrossAttn" in cfg.up_block_types[i]
        pairs.append(
            (f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{per * i + per - 1}.{2 if has_attention else 1}.")
        )
    resnet_parts = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                    "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}  # fmt: skip
    state = {}
    for key, value in unet.state_dict().items():
        if "resnets" in key:
            head, _, leaf = key.rpartition(".resnets.")
            index, part, rest = leaf.split(".", 2)
            part = resnet_parts.get(part, part)
            key = f"{head}.resnets.{index}.{part}.{rest}"
        state[key] = value
    return {"model.diffusion_model." + k: v for k, v in _rename(state, pairs).items()}


def _vae_to_ldm(vae) -> dict:
    n = len(vae.config.block_out_channels)
    lpb = vae.config.layers_per_block
    pairs = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for side in ("encoder", "decoder"):
        pairs += [(f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.")]
        pairs += [(f"{side}.mid_block.resnets.{i}.", f"{side}.mid.block_{i + 1}.") for i in range(2)]
    for i in range(n):
        pairs += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.") for j in range(lpb)]
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        pairs += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}.") for j in range(lpb + 1)]
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    state = {}
    for key, value in _rename(vae.state_dict(), pairs).items():
        key = key.replace("conv_shortcut", "nin_shortcut")
        match = re.match(r"(.*\.attn_1\.)(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$", key)
        if match:
            head, part, leaf = match.groups()
            key = f"{head}{attention[part]}.{leaf}"
            if leaf == "weight" and part != "group_norm":
                value = value.reshape(*value.shape, 1, 1)  # ldm's attention projections are 1x1 convs
        state[key] = value
    return {"first_stage_model." + k: v for k, v in state.items()}


def ldm_checkpoint(pipe) -> dict[str, torch.Tensor]:
    """One state dict in the original Stable Diffusion layout, as community checkpoints ship."""
    # transformers 5 names CLIP's weights without the "text_model." level the original files have.
    text = {
        "cond_stage_model.transformer." + ("" if k.startswith("text_model.") else "text_model.") + k: v
        for k, v in pipe.text_encoder.state_dict().items()
    }
    state = {**_unet_to_ldm(pipe.unet), **_vae_to_ldm(pipe.vae), **text}
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def animatediff_motion_module(adapter) -> dict[str, torch.Tensor]:
    """A diffusers MotionAdapter's weights under the original AnimateDiff key names."""
    state = {}
    for key, value in adapter.state_dict().items():
        key = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", key)
        if key.endswith("pos_embed.pe"):
            # The original keeps one positional table per attention block.
            head = key[: -len("pos_embed.pe")]
            for block in (0, 1):
                state[f"{head}attention_blocks.{block}.pos_encoder.pe"] = value.clone()
            continue
        for ours, theirs in ((".attn1.", ".attention_blocks.0."), (".attn2.", ".attention_blocks.1."),
                             (".norm1.", ".norms.0."), (".norm2.", ".norms.1."), (".norm3.", ".ff_norm.")):  # fmt: skip
            key = key.replace(ours, theirs)
        state[key] = value.detach().clone().contiguous()
    return state
