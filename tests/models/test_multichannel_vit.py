"""Multi-channel patch embed, tiny archs through the production builder, and init from RGB weights."""

import pytest
import torch

from helpers import tiny_cfg

from dinov2_cell.models.multichannel_vit import build_model, build_model_from_cfg, expand_patch_embed_weight


def test_builder_uses_in_chans_and_registers_into_upstream():
    import dinov2.train.ssl_meta_arch as sma

    assert sma.build_model_from_cfg is build_model_from_cfg
    for n in (3, 5, 8):
        student, teacher, dim = build_model_from_cfg(tiny_cfg(f"student.in_chans={n}"))
        assert student.patch_embed.proj.weight.shape[1] == n == teacher.patch_embed.proj.weight.shape[1]
        out = teacher.forward_features(torch.rand(2, n, 56, 56))
        assert out["x_norm_clstoken"].shape == (2, dim)


def test_unknown_arch_names_the_key():
    with pytest.raises(ValueError, match="student.arch: unknown architecture 'vit_nope'"):
        build_model_from_cfg(tiny_cfg("student.arch=vit_nope"))


def test_expand_patch_embed_formula():
    w = torch.randn(4, 3, 2, 2)
    e = expand_patch_embed_weight(w, 5)  # RGB channels 0 and 1 get two copies each, channel 2 one
    for c, copies in zip(range(5), (2, 2, 1, 2, 2)):
        assert torch.allclose(e[:, c], w[:, c % 3] / copies)
    for n in (1, 2, 3, 5, 8):  # grey-image response: the kernels summed over channels are unchanged
        assert torch.allclose(expand_patch_embed_weight(w, n).sum(1), w.sum(1), atol=1e-6)


def test_rgb_init_keeps_the_response_to_a_grey_image(tmp_path):
    """An image with the same intensity in every channel gets the RGB model's patch embedding (up to the bias)."""
    cfg3 = tiny_cfg("student.in_chans=3", "crops.global_crops_size=28")  # RGB model at another resolution
    torch.manual_seed(0)
    rgb, _ = build_model(cfg3.student, only_teacher=True, img_size=28, in_chans=3)
    path = tmp_path / "rgb.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in rgb.state_dict().items()}}, path)

    cfg5 = tiny_cfg("student.in_chans=5", f"student.rgb_init_weights={path}")
    student, _, _ = build_model_from_cfg(cfg5)
    grey = torch.rand(1, 1, 56, 56)
    with torch.no_grad():
        a = student.patch_embed(grey.expand(1, 5, 56, 56))
        b = rgb.patch_embed(grey.expand(1, 3, 56, 56))
    assert torch.allclose(a, b, atol=1e-5)
    assert student.pos_embed.shape[1] == (56 // 14) ** 2 + 1  # interpolated from the 28 px grid
    assert torch.equal(student.blocks[0].attn.qkv.weight, rgb.blocks[0].attn.qkv.weight)


def test_rgb_init_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="rgb_init_weights"):
        build_model_from_cfg(tiny_cfg(f"student.rgb_init_weights={tmp_path / 'missing.pth'}"))
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"head.weight": torch.zeros(1)}}, bad)
    with pytest.raises(KeyError, match="patch_embed.proj.weight"):
        build_model_from_cfg(tiny_cfg(f"student.rgb_init_weights={bad}"))
