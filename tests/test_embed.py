"""Embedding CLI and API: tiny teacher checkpoints, a stub dataset, synthetic plates for the subprocess run."""

import dataclasses
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from dinov2_cell import embed
from dinov2_cell.models.teacher import load_teacher
from dinov2_cell.profiles.ssl import prepare_image
from dinov2_cell.profiles.io import PROFILE_METADATA, feature_columns
from dinov2_cell.profiles.merge import merge_well

PLATE_9, PLATE_16 = "BR00116991", "BR00116995"  # one A549 and one U2OS compound plate
N_CHANNELS = {"fluo": 5, "bf": 3}


def make_run(run_dir, in_chans, dataset_path=None):
    """A training output dir with a tiny teacher checkpoint and its config.yaml (the brief's recipe)."""
    from dinov2_cell.models.multichannel_vit import build_model
    from dinov2_cell.train.config import build_config

    opts = ["student.arch=vit_cell_tiny", "student.patch_size=14", f"student.in_chans={in_chans}"]
    opts.append("crops.global_crops_size=56")
    if dataset_path:
        opts.append(f"train.dataset_path={dataset_path}")
    cfg = build_config(None, opts)
    torch.manual_seed(in_chans)
    teacher, _ = build_model(cfg.student, only_teacher=True, img_size=56, in_chans=in_chans)
    os.makedirs(os.path.join(run_dir, "eval", "final"), exist_ok=True)
    state = {"teacher": {"backbone." + k: v for k, v in teacher.state_dict().items()}}
    torch.save(state, os.path.join(run_dir, "eval", "final", "teacher_checkpoint.pth"))
    OmegaConf.save(cfg, os.path.join(run_dir, "config.yaml"))
    return str(run_dir)


class StubDataset:
    """CPJUMP1Dataset's surface: ``index``, ``len``, ``get_image``; PLATE_16 has 16 sites per well, one site missing."""

    def __init__(self, root, plates, channels, **kwargs):
        rows = []
        for p in [PLATE_9, PLATE_16] if plates is None else plates:
            for w in ("A01", "A02"):
                for s in range(1, (16 if p == PLATE_16 else 9) + 1):
                    if (p, w, s) != (PLATE_9, "A02", 5):
                        rows.append((p, w, s))
        self.index = pd.DataFrame(rows, columns=["Metadata_Plate", "Metadata_Well", "Metadata_Site"])
        self.n = N_CHANNELS[channels]

    def __len__(self):
        return len(self.index)

    def get_image(self, i):
        p, w, s = self.index.iloc[i]
        g = torch.Generator().manual_seed(zlib.crc32(f"{p}/{w}/{s}".encode()))
        return torch.rand(self.n, 40, 40, generator=g)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"fluo": make_run(root / "fluo", 5), "bf": make_run(root / "bf", 3)}


@pytest.fixture()
def factory():
    calls = []

    def f(root, plates, channels, **kwargs):
        calls.append(plates)
        return StubDataset(root, plates, channels, **kwargs)

    f.calls = calls
    return f


def test_prepare_image_resize_and_crop():
    img = torch.rand(5, 45, 40)
    assert prepare_image(img, 56, 14).shape == (5, 56, 56)
    cropped = prepare_image(img, 0, 14)
    assert cropped.shape == (5, 42, 28)
    assert torch.equal(cropped, img[:, 1:43, 6:34])


def test_embed_plates_matches_direct_computation(tmp_path, runs, factory):
    out = embed.embed_plates(runs, "root", str(tmp_path / "out"), batch_size=7, dataset_factory=factory, progress=False)
    df = pd.read_parquet(out)
    assert list(df.columns[: len(PROFILE_METADATA)]) == list(PROFILE_METADATA)
    assert len(df) == 4 and set(df["Metadata_cell_line"]) == {"A549", "U2OS"}
    feats = feature_columns(df)
    assert len(feats) == 2 * 9 * 2 * 96 and feats[0] == "fluo_p0_0000" and feats[-1] == "bf_p8_0191"
    # One well recomputed by hand: 16 sites -> backbone -> concat(CLS, mean patch) -> 4x4 grid -> 3x3 -> concat.
    backbone, _ = __import__("dinov2_cell.models.multichannel_vit", fromlist=["x"]).load_teacher_backbone(runs["fluo"])
    ds = StubDataset("root", [PLATE_16], "fluo")
    with torch.no_grad():
        x = torch.stack([prepare_image(ds.get_image(i), 56, 14) for i in range(16)])
        o = backbone.forward_features(x)
        site = torch.cat([o["x_norm_clstoken"], o["x_norm_patchtokens"].mean(1)], 1).numpy()
    ref, _ = merge_well(list(range(1, 17)), site, side=4)
    row = df[(df["Metadata_Plate"] == PLATE_16) & (df["Metadata_Well"] == "A01")]
    got = row[[c for c in feats if c.startswith("fluo_")]].to_numpy()[0]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # Submission CSV and the per-plate stats (the 8-site well is counted).
    # The submission: compound wells only (A02 is a DMSO well in the real plate map), features in profile order.
    sub = pd.read_csv(tmp_path / "out" / "submission.csv")
    assert list(sub.columns[:4]) == ["Metadata_broad_sample", "Metadata_Plate", "Metadata_Well", "feature_0"]
    assert list(sub["Metadata_Plate"] + "_" + sub["Metadata_Well"]) == [f"{PLATE_9}_A01", f"{PLATE_16}_A01"]
    assert sub.shape[1] == 3 + len(feats)
    a01 = df[df["Metadata_Well"] == "A01"][feats].to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(sub.iloc[:, 3:].to_numpy(), a01)
    config = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert config["outputs"]["submission.csv"]["features"] == feats
    stats = pd.read_json(tmp_path / "out" / "parts" / f"{PLATE_9}.stats.json")
    assert stats["fluo"]["wells_with_missing_sites"] == 1


def test_resume_guard_shards_and_alignment(tmp_path, runs, factory):
    out = str(tmp_path / "out")
    plates = [PLATE_9, PLATE_16]
    kw = dict(plates=plates, batch_size=16, dataset_factory=factory, progress=False)
    embed.embed_plates(runs, "root", out, shard="0/2", **kw)
    embed.embed_plates(runs, "root", out, shard="1/2", **kw)
    assert not os.path.exists(os.path.join(out, "profiles.parquet"))  # shards never merge
    n_calls = len(factory.calls)
    merged = embed.embed_plates(runs, "root", out, merge_only=True, align_alpha=0.5, **kw)
    assert merged.endswith("profiles_aligned_alpha0.5.parquet") and len(factory.calls) == n_calls
    plain = pd.read_parquet(os.path.join(out, "profiles.parquet"))
    aligned = pd.read_parquet(merged)
    f = "fluo_p4_0007"
    mu = plain.groupby("Metadata_Well")[f].transform("mean")
    np.testing.assert_allclose(aligned[f], 0.5 * plain[f] + 0.5 * mu, rtol=1e-6)
    assert os.path.exists(os.path.join(out, "submission_aligned_alpha0.5.csv"))
    # Rerun: every part present -> nothing read, merged file kept.
    assert embed.embed_plates(runs, "root", out, **kw).endswith("profiles.parquet")
    assert len(factory.calls) == n_calls
    with pytest.raises(FileExistsError, match="site_merge"):
        embed.embed_plates(runs, "root", out, site_merge="mean", **kw)
    p = embed.embed_plates(runs, "root", out, site_merge="mean", overwrite=True, **kw)
    assert len(feature_columns(pd.read_parquet(p))) == 2 * 2 * 96


def test_channels_and_metadata_errors(tmp_path, runs, factory):
    with pytest.raises(ValueError, match="in_chans=5"):
        embed.embed_plates({"fluo": runs["fluo"]}, "r", str(tmp_path / "a"), channels={"fluo": "bf"})
    with pytest.raises(ValueError, match="metadata"):  # an ORF plate: no packaged well metadata
        embed.embed_plates(runs, "r", str(tmp_path / "b"), plates=["BR00117006"], dataset_factory=factory)


def test_channels_and_normalisation_inherited_from_training_config(tmp_path):
    run = make_run(tmp_path / "r", 3, dataset_path="CPJUMP1:root=/x:channels=bf:normalize=bitdepth:on_error=skip")
    model = load_teacher(run)
    assert model.name == "bf" and model.channels == "bf" and model.image_size == 56
    assert model.dataset_kwargs == {"normalize": "bitdepth"}  # on_error is an inference choice, not inherited
    assert embed.parse_dataset_opts(["on_error=skip", "percentile_low=1"]) == {
        "on_error": "skip",
        "percentile_low": 1.0,
    }
    with pytest.raises(ValueError, match="--data-root"):
        embed.parse_dataset_opts(["root=/y"])
    # The paper configs hold root=${oc.env:CPJUMP1_ROOT}: an unset variable must not stop inference.
    run = make_run(tmp_path / "p", 5, dataset_path="CPJUMP1:root=${oc.env:I6_SURELY_UNSET}:channels=fluo")
    assert load_teacher(run).channels == "fluo"


def test_cli_help_and_tiny_run_on_synthetic_plates(tmp_path, runs):
    from dinov2_cell.synthetic import generate_plates

    data = tmp_path / "plates"
    generate_plates(data, plates=[PLATE_9], wells=["A01", "A02"], sites=9, size=28, missing_sites=0.5, progress=False)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "dinov2_cell.embed"]
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "--align-alpha" in out.stdout
    args = ["--fluo", runs["fluo"], "--bf", runs["bf"], "--data-root", str(data), "--out", str(tmp_path / "o")]
    out = subprocess.run(cmd + args + ["--batch-size", "8", "--no-progress"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    df = pd.read_parquet(tmp_path / "o" / "profiles.parquet")
    assert list(df["Metadata_Well"]) == ["A01", "A02"] and df["Metadata_Plate"].eq(PLATE_9).all()
    assert df["Metadata_pert_iname"].iloc[1] == "DMSO"  # A02 is a DMSO well in the real plate map
    sub = pd.read_csv(tmp_path / "o" / "submission.csv")
    assert list(sub["Metadata_Well"]) == ["A01"] and sub["Metadata_Plate"].eq(PLATE_9).all()


def test_cli_bad_input_is_one_error_line(tmp_path, runs):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "dinov2_cell.embed", "--data-root", str(tmp_path), "--out", str(tmp_path / "o")]
    missing = str(tmp_path / "no_such_run")
    out = subprocess.run(cmd + ["--fluo", missing], capture_output=True, text=True, env=env, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "error:" in lines[0] and missing in lines[0], out.stderr
    out = subprocess.run(cmd + ["--align-alpha", "2", "--fluo", runs["fluo"]], capture_output=True, text=True, env=env)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "--align-alpha" in lines[0], out.stderr


def test_options_feed_parser_api_and_run_config(tmp_path, runs, factory):
    from dinov2_cell.profiles.ssl import EmbedOptions

    # Old spellings stay accepted for one release: space-separated --plates, --root, --workers.
    old = ["--fluo", runs["fluo"], "--root", "r", "--out", "o", "--plates", PLATE_9, PLATE_16, "--workers", "0"]
    opts = embed.options_from_args(embed.build_parser().parse_args(embed.join_space_separated(old)))
    assert opts.plates == [PLATE_9, PLATE_16] and opts.data_root == "r" and opts.num_workers == 0
    new = ["--fluo", runs["fluo"], "--data-root", "r", "--out", "o", "--plates", f"{PLATE_9},{PLATE_16}"]
    new += ["--site-merge", "mean", "--no-merge", "--dataset-opt", "on_error=skip"]
    opts = embed.options_from_args(embed.build_parser().parse_args(new))
    assert opts == EmbedOptions(
        checkpoints={"fluo": runs["fluo"]},
        data_root="r",
        out="o",
        plates=[PLATE_9, PLATE_16],
        site_merge="mean",
        merge=False,
        dataset_opt=["on_error=skip"],
    )
    # The recorded options are exactly the run config's settings besides the models.
    embed.embed(dataclasses.replace(opts, out=str(tmp_path / "run"), progress=False), dataset_factory=factory)
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert saved["settings"]["site_merge"] == "mean" and saved["source"]["dataset_kwargs"] == {"on_error": "skip"}
    assert set(saved["settings"]) == {"models", "site_features", *opts.recorded()}


def test_cli_skip_leaves_a_truncated_and_a_deleted_tiff_out_of_their_wells(tmp_path, runs):
    """--dataset-opt on_error=skip: the unreadable site becomes a missing site of its well, never another sample."""
    from dinov2_cell.data.cpjump1_dataset import CPJUMP1Dataset
    from dinov2_cell.models.multichannel_vit import load_teacher_backbone
    from dinov2_cell.synthetic import generate_plates

    data = tmp_path / "plates"
    wells = ["A01", "A02", "A03"]
    generate_plates(data, plates=[PLATE_9], wells=wells, sites=9, size=28, missing_sites=0.0, progress=False)
    folder = next(data.rglob("Images"))
    truncated, deleted = folder / "r01c01f03p01-ch2sk1fk1fl1.tiff", folder / "r01c02f05p01-ch1sk1fk1fl1.tiff"
    with open(truncated, "r+b") as f:  # a copy cut short: the pixel data ends early
        f.truncate(300)
    deleted.unlink()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "dinov2_cell.embed", "--fluo", runs["fluo"], "--data-root", str(data), "--no-progress"]
    out = subprocess.run(cmd + ["--out", str(tmp_path / "raise")], capture_output=True, text=True, env=env)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "error: " in lines[-1] and str(truncated) in lines[-1], out.stderr
    out = subprocess.run(
        cmd + ["--out", str(tmp_path / "o"), "--dataset-opt", "on_error=skip"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert "fluo: 2 wells with missing sites, 2 unreadable sites left out" in out.stderr
    assert "failed to read" in out.stderr and f"missing image file: {deleted}" in out.stderr

    # Reference by hand: every readable site through the backbone, each well merged from its readable sites only.
    ds = CPJUMP1Dataset(root=str(data), plates=[PLATE_9], channels="fluo")
    bad = {("A01", "3"), ("A02", "5")}
    backbone, _ = load_teacher_backbone(runs["fluo"])
    df = pd.read_parquet(tmp_path / "o" / "profiles.parquet")
    assert list(df["Metadata_Well"]) == wells
    for well in wells:
        rows = [i for i in range(len(ds)) if ds.index.at[i, "Metadata_Well"] == well]
        keep = [i for i in rows if (well, str(ds.index.at[i, "Metadata_Site"])) not in bad]
        assert len(keep) == (9 if well == "A03" else 8)
        with torch.no_grad():
            o = backbone.forward_features(torch.stack([prepare_image(ds.get_image(i), 56, 14) for i in keep]))
            site = torch.cat([o["x_norm_clstoken"], o["x_norm_patchtokens"].mean(1)], 1).numpy()
        ref, n_missing = merge_well([int(ds.index.at[i, "Metadata_Site"]) for i in keep], site, side=3)
        assert n_missing == 9 - len(keep)
        got = df.loc[df["Metadata_Well"] == well, feature_columns(df)].to_numpy()[0]
        np.testing.assert_allclose(got, ref, atol=1e-5)
    stats = json.loads((tmp_path / "o" / "parts" / f"{PLATE_9}.stats.json").read_text())["fluo"]
    assert stats["unreadable_sites"] == 2 and stats["wells_with_missing_sites"] == 2 and stats["sites"] == 25
    assert [(u["Metadata_Well"], u["Metadata_Site"]) for u in stats["unreadable"]] == [("A01", "3"), ("A02", "5")]
    assert "failed to read" in stats["unreadable"][0]["error"] and str(deleted) in stats["unreadable"][1]["error"]
    assert stats["wells_without_readable_site"] == []


def test_skip_drops_a_well_without_readable_site_and_refuses_an_unreadable_plate(tmp_path, runs):
    from dinov2_cell.data.errors import DataReadError

    class Unreadable(StubDataset):
        def __init__(self, root, plates, channels, on_error="raise", bad_wells=("A02",), **kwargs):
            super().__init__(root, plates, channels)
            self.on_error, self.bad_wells = on_error, bad_wells

        def get_image(self, i):
            if self.index.at[i, "Metadata_Well"] in self.bad_wells:
                raise DataReadError(f"sample {i}: failed to read 8192 bytes, got 92")
            return super().get_image(i)

    def factory(root, plates, channels, **kwargs):
        return Unreadable(root, plates, channels, **kwargs)

    opts = dict(dataset_factory=factory, progress=False, dataset_opt=["on_error=skip"], plates=[PLATE_16])
    df = pd.read_parquet(embed.embed_plates({"fluo": runs["fluo"]}, "root", str(tmp_path / "o"), **opts))
    assert list(df["Metadata_Well"]) == ["A01"]  # A02: no readable site, left out
    stats = json.loads((tmp_path / "o" / "parts" / f"{PLATE_16}.stats.json").read_text())["fluo"]
    assert stats["unreadable_sites"] == 16 and stats["wells_without_readable_site"] == ["A02"]

    def all_bad(root, plates, channels, **kwargs):
        return Unreadable(root, plates, channels, bad_wells=("A01", "A02"), **kwargs)

    with pytest.raises(ValueError, match=f"{PLATE_16} fluo: none of the 32 sites could be read"):
        embed.embed_plates({"fluo": runs["fluo"]}, "root", str(tmp_path / "p"), **{**opts, "dataset_factory": all_bad})
