"""Multi-channel ViT backbones, registered into upstream's model building.

Upstream's `build_model` always builds a 3-channel patch embed. This module's `build_model_from_cfg` is the same
construction with `in_chans` taken from the config (`student.in_chans`: 5 fluorescent, 3 brightfield or 8), an
optional initialisation from 3-channel (RGB) weights, and a few tiny architectures for CPU tests and the demo.
`dinov2_cell.plugin.install()` rebinds `dinov2.train.ssl_meta_arch.build_model_from_cfg` to it, so upstream's
`SSLMetaArch.__init__` builds multi-channel students and teachers; importing this module rebinds nothing.
"""

from __future__ import annotations

import logging
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

import dinov2.models.vision_transformer as vits
from dinov2.layers import MemEffAttention, NestedTensorBlock

logger = logging.getLogger("dinov2_cell")


def _tiny(embed_dim: int, depth: int, num_heads: int):
    def factory(patch_size=16, **kwargs):
        return vits.DinoVisionTransformer(
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=4,
            block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
            **kwargs,
        )

    factory.__doc__ = f"ViT with embed_dim {embed_dim}, depth {depth}, {num_heads} heads (CPU tests and the demo)."
    return factory


# Tiny variants built through the same path as production archs (cf. timm's test-only variants).
TINY_ARCHS = {
    "vit_cell_tiny": _tiny(embed_dim=96, depth=2, num_heads=3),
    "vit_cell_mini": _tiny(embed_dim=192, depth=4, num_heads=3),
}


def build_model(args, only_teacher: bool = False, img_size: int = 224, in_chans: int = 3):
    """Builds (student, teacher, embed_dim), or (teacher, embed_dim) with `only_teacher`.

    Args:
        args: the `student` config section (arch, patch_size, layerscale, ffn_layer, block_chunks, biases,
            drop_path_rate, drop_path_uniform, rgb_init_weights).
        only_teacher: build the teacher only (inference).
        img_size: size the position embedding is created for (interpolated at run time for other sizes).
        in_chans: input channels of the patch embed.
    """
    arch = args.arch.removesuffix("_memeff")
    factory = TINY_ARCHS.get(arch) or (getattr(vits, arch, None) if arch.startswith("vit") else None)
    if factory is None:
        known = sorted({n for n in dir(vits) if n.startswith("vit_")} | set(TINY_ARCHS))
        raise ValueError(f"student.arch: unknown architecture {args.arch!r}; known: {', '.join(known)}")
    vit_kwargs = dict(
        img_size=img_size,
        patch_size=args.patch_size,
        in_chans=in_chans,
        init_values=args.layerscale,
        ffn_layer=args.ffn_layer,
        block_chunks=args.block_chunks,
        qkv_bias=args.qkv_bias,
        proj_bias=args.proj_bias,
        ffn_bias=args.ffn_bias,
    )
    teacher = factory(**vit_kwargs)
    rgb_weights = args.get("rgb_init_weights", "") if hasattr(args, "get") else ""
    if only_teacher:
        return teacher, teacher.embed_dim
    student = factory(**vit_kwargs, drop_path_rate=args.drop_path_rate, drop_path_uniform=args.drop_path_uniform)
    if rgb_weights:
        init_from_rgb_checkpoint(student, rgb_weights)
    return student, teacher, student.embed_dim


def build_model_from_cfg(cfg, only_teacher: bool = False):
    """Upstream's `build_model_from_cfg` signature, with `in_chans` from `cfg.student.in_chans` (default 3)."""
    in_chans = int(cfg.student.get("in_chans", 3))
    return build_model(cfg.student, only_teacher=only_teacher, img_size=cfg.crops.global_crops_size, in_chans=in_chans)


def expand_patch_embed_weight(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Maps a (D, 3, p, p) RGB patch-embed kernel to (D, in_chans, p, p), keeping the response to grey images.

    Channel c copies RGB channel c mod 3, and each RGB kernel is divided by its number of copies (for fewer than 3
    channels, RGB channel k is summed into channel k mod in_chans). So an image with the same intensity in every
    channel gets exactly the patch embedding the RGB model gave a grey image of that intensity.

    Args:
        weight: the RGB kernel.
        in_chans: target channel count.
    """
    src = weight.shape[1]
    if in_chans >= src:
        idx = torch.arange(in_chans) % src
        copies = torch.bincount(idx, minlength=src).to(weight.dtype)
        return weight[:, idx] / copies[idx].view(1, -1, 1, 1)
    out = weight.new_zeros(weight.shape[0], in_chans, *weight.shape[2:])
    for k in range(src):
        out[:, k % in_chans] += weight[:, k]
    return out


def _resize_pos_embed(pos_embed: torch.Tensor, n_patches: int) -> torch.Tensor:
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    old = int(math.sqrt(grid.shape[1]))
    new = int(math.sqrt(n_patches))
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)], dim=1)


def init_from_rgb_checkpoint(model: nn.Module, path: str) -> None:
    """Initialises a multi-channel backbone from a 3-channel checkpoint (e.g. released DINOv2 RGB weights).

    Accepts a bare state dict or one under "model", "teacher" or "student" (prefix "backbone." stripped). The patch
    embed is expanded with `expand_patch_embed_weight`, the position embedding is interpolated to the model's grid,
    and keys absent from the model (heads) are ignored and logged.

    Args:
        model: the backbone to initialise in place.
        path: checkpoint file.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"student.rgb_init_weights: no such file {path!r}") from None
    for key in ("model", "teacher", "student"):
        if isinstance(ckpt, dict) and key in ckpt and isinstance(ckpt[key], dict):
            ckpt = ckpt[key]
            break
    state = {k.removeprefix("backbone."): v for k, v in ckpt.items()}
    own = model.state_dict()
    w = state.get("patch_embed.proj.weight")
    if w is None:
        raise KeyError(f"{path}: no 'patch_embed.proj.weight' in the checkpoint; is it a ViT backbone?")
    state["patch_embed.proj.weight"] = expand_patch_embed_weight(w, own["patch_embed.proj.weight"].shape[1])
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        state["pos_embed"] = _resize_pos_embed(state["pos_embed"], own["pos_embed"].shape[1] - 1)
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"{path}: shapes differ from student.arch for {', '.join(mismatched[:5])}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    logger.info("initialised from RGB weights %s (missing %d keys, ignored %d)", path, len(missing), len(unexpected))


def find_teacher_checkpoint(path: str) -> tuple[str, str]:
    """Resolves a run directory or a checkpoint file to (teacher_checkpoint.pth, config.yaml).

    A run directory resolves to `eval/final/teacher_checkpoint.pth` if present, else the latest `eval/*/` one; the
    config is the run's `config.yaml` (two levels above an eval checkpoint).

    Args:
        path: a training output dir or a `teacher_checkpoint.pth`.
    """
    import glob
    import os

    if os.path.isdir(path):
        final = os.path.join(path, "eval", "final", "teacher_checkpoint.pth")
        candidates = [final] if os.path.isfile(final) else glob.glob(os.path.join(path, "eval", "*", "teacher_*.pth"))
        if not candidates:
            raise FileNotFoundError(f"{path}: no eval/*/teacher_checkpoint.pth (has this run trained?)")
        ckpt = max(candidates, key=os.path.getmtime)
        run_dir = path
    elif os.path.isfile(path):
        ckpt = path
        run_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(path))))
    else:
        raise FileNotFoundError(f"no such checkpoint or run directory: {path!r}")
    config = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(config):
        raise FileNotFoundError(f"{ckpt}: no config.yaml found at {config}")
    return ckpt, config


def load_teacher_backbone(path: str, device: str | torch.device = "cpu"):
    """Loads the EMA teacher backbone of a training run for inference.

    Args:
        path: a training output dir or an `eval/<name>/teacher_checkpoint.pth` inside one.
        device: where to put the model.

    Returns:
        (backbone in eval mode, its merged config).
    """
    from omegaconf import OmegaConf

    ckpt_path, config_path = find_teacher_checkpoint(path)
    cfg = OmegaConf.load(config_path)
    backbone, _ = build_model(
        cfg.student, only_teacher=True, img_size=cfg.crops.global_crops_size, in_chans=int(cfg.student.in_chans)
    )
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["teacher"]
    state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    backbone.load_state_dict(state, strict=True)
    return backbone.to(device).eval(), cfg
