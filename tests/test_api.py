"""The Python API: `dinov2_cell.load(run).embed(array)` gives the embed CLI's site features for the same site.

One synthetic plate (illumination functions included) is embedded once by `python -m dinov2_cell.embed` with two tiny
teachers (a per-image percentile run and a `normalize=plate` run); the sites are then read from their TIFFs the way
a user would (LoadData CSV, tifffile, numpy) and fed to the API.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

import dinov2_cell
from helpers import PYTHON, REPO, child_env
from test_embed import PLATE_9, make_run

FLUO = ("DNA", "ER", "RNA", "AGP", "Mito")
WELLS = ("A01", "A02")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two runs, one synthetic plate, and the profiles the embed CLI wrote for it."""
    from dinov2_cell.synthetic import generate_plates

    root = tmp_path_factory.mktemp("api")
    runs = {
        "pct": make_run(root / "pct", 5),
        "plate": make_run(root / "plate", 5, dataset_path="CPJUMP1:root=/x:channels=fluo:normalize=plate"),
    }
    data = root / "plates"
    generate_plates(data, plates=[PLATE_9], wells=list(WELLS), sites=9, size=28, illum=True, progress=False)
    cmd = [sys.executable, "-m", "dinov2_cell.embed", "--data-root", str(data), "--out", str(root / "out")]
    cmd += ["--checkpoint", f"pct={runs['pct']}", "--checkpoint", f"plate={runs['plate']}", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(PYTHONWARNINGS="ignore"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    profiles = pd.read_parquet(root / "out" / "profiles.parquet")
    return {"runs": runs, "data": data, "profiles": profiles}


def read_well(data, well):
    """The raw (9, 5, H, W) uint16 sites of a well and their (9, 5, H, W) illumination functions, as a user reads them:
    LoadData CSV -> one TIFF per channel in the model's channel order, one .npy per channel."""
    csv = next(data.rglob("load_data_with_illum.csv"))
    rows = pd.read_csv(csv).query("Metadata_Well == @well").sort_values("Metadata_Site")
    assert list(rows["Metadata_Site"]) == list(range(1, 10))
    sites, illum = [], []
    for _, r in rows.iterrows():
        sites.append(np.stack([tifffile.imread(data / r[f"PathName_Orig{c}"] / r[f"FileName_Orig{c}"]) for c in FLUO]))
        illum.append(np.stack([np.load(data / r[f"PathName_Illum{c}"] / r[f"FileName_Illum{c}"]) for c in FLUO]))
    return np.stack(sites), np.stack(illum)


def cli_sites(profiles, well, name, dim):
    """The 9 site vectors of a 9-site well inside the CLI's well vector (grid position p = site p + 1, row-major)."""
    row = profiles[profiles["Metadata_Well"] == well]
    assert len(row) == 1
    return np.stack([row[[f"{name}_p{p}_{j:04d}" for j in range(dim)]].to_numpy()[0] for p in range(9)])


def test_embed_equals_the_embed_cli_features(world):
    model = dinov2_cell.load(world["runs"]["pct"], device="cpu")
    assert model.channels == FLUO and model.normalize == "percentile" and model.device == torch.device("cpu")
    assert model.feature_dim == 2 * model.teacher.embed_dim == 192
    for well in WELLS:
        sites, illum = read_well(world["data"], well)
        assert sites.dtype == np.uint16 and sites.shape == (9, 5, 28, 28)
        got = model.embed(sites, illum=illum)
        assert got.dtype == np.float32 and got.shape == (9, model.feature_dim)
        want = cli_sites(world["profiles"], well, "pct", model.feature_dim)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # One site (C, H, W) -> (1, D); a torch tensor and a shared (C, H, W) illumination give the same numbers.
    one = model.embed(sites[4], illum=illum[4])
    assert one.shape == (1, model.feature_dim)
    np.testing.assert_allclose(one[0], got[4], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(model.embed(torch.from_numpy(sites[4].astype(np.int32)), illum=illum[4]), one)
    same_illum = np.broadcast_to(illum[0], illum.shape)
    np.testing.assert_array_equal(model.embed(sites, illum=illum[0]), model.embed(sites, illum=same_illum))
    # Batching does not change the result beyond float rounding; no illumination gives other features.
    np.testing.assert_allclose(model.embed(sites, illum=illum, batch_size=2), got, rtol=0, atol=1e-6)
    assert np.abs(model.embed(sites) - got).max() > 1e-3


def test_plate_normalised_run_needs_the_plate_statistics(world):
    model = dinov2_cell.load(world["runs"]["plate"], device="cpu")
    assert model.normalize == "plate"
    sites, illum = read_well(world["data"], "A02")
    with pytest.raises(ValueError, match=r"normalize=plate.*plate_bounds="):
        model.embed(sites, illum=illum)
    bounds = model.plate_bounds(world["data"], PLATE_9)
    assert bounds.shape == (5, 2) and (bounds[:, 1] > bounds[:, 0]).all()
    got = model.embed(sites, illum=illum, plate_bounds=bounds)
    np.testing.assert_allclose(got, cli_sites(world["profiles"], "A02", "plate", 192), rtol=0, atol=1e-6)
    # Statistics from one's own sites: the run's 0.1 / 99.9 percentiles pooled over all pixels (28 px sites: no
    # sub-sampling), by hand with np.percentile.
    a01, illum01 = read_well(world["data"], "A01")
    corrected = np.concatenate([a01, sites]).astype(np.float32) / np.concatenate([illum01, illum])
    own = model.bounds_from_sites(list(corrected))
    pooled = corrected.transpose(1, 0, 2, 3).reshape(5, -1).astype(np.float64)
    np.testing.assert_allclose(own, np.percentile(pooled, [0.1, 99.9], axis=1).T, rtol=1e-12)
    # Per-site bounds (N, C, 2) as well as shared (C, 2); bounds of the wrong shape or on another run are refused.
    np.testing.assert_array_equal(model.embed(sites, illum=illum, plate_bounds=np.stack([bounds] * 9)), got)
    with pytest.raises(ValueError, match=r"plate_bounds: expected shape \(5, 2\)"):
        model.embed(sites, illum=illum, plate_bounds=bounds[:3])
    pct = dinov2_cell.load(world["runs"]["pct"], device="cpu")
    with pytest.raises(ValueError, match="normalize=percentile, not per plate"):
        pct.embed(sites, plate_bounds=bounds)
    with pytest.raises(ValueError, match="not per plate"):
        pct.plate_bounds(world["data"], PLATE_9)
    # The CLI's --dataset-opt override, here too: the plate run read with per-image percentiles needs no bounds.
    as_pct = dinov2_cell.load(world["runs"]["plate"], device="cpu", dataset_opts={"normalize": "percentile"})
    assert as_pct.embed(sites[:1]).shape == (1, 192)


def test_wrong_channels_shapes_and_paths_are_named(world, tmp_path):
    model = dinov2_cell.load(world["runs"]["pct"], device="cpu")
    msg = re.escape("expects 5 channels in the order DNA, ER, RNA, AGP, Mito on axis C, got 3")
    with pytest.raises(ValueError, match=msg):
        model.embed(np.zeros((3, 28, 28), np.uint16))
    with pytest.raises(ValueError, match=msg):
        model.embed(np.zeros((2, 3, 28, 28), np.uint16))
    with pytest.raises(ValueError, match=r"\(C, H, W\) site or an \(N, C, H, W\) batch with C = 5"):
        model.embed(np.zeros((28, 28), np.uint16))
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.embed(np.full((5, 28, 28), np.nan, np.float32))
    with pytest.raises(ValueError, match="illum: illumination functions must be finite and positive"):
        model.embed(np.ones((5, 28, 28), np.uint16), illum=np.zeros((5, 28, 28), np.float32))
    assert model.embed(np.zeros((0, 5, 28, 28), np.uint16)).shape == (0, 192)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        model.embed(np.zeros((5, 28, 28), np.uint16), precision="fp8")
    # A run read without illumination correction refuses functions; one that requires them refuses to go without.
    ones = np.ones((5, 28, 28), np.float32)
    no_illum = dinov2_cell.load(world["runs"]["pct"], device="cpu", dataset_opts={"illum": "no"})
    with pytest.raises(ValueError, match=r"without correction \(illum=no\)"):
        no_illum.embed(ones, illum=ones)
    with pytest.raises(ValueError, match=r"requires illumination correction \(illum=yes\)"):
        dinov2_cell.load(world["runs"]["pct"], device="cpu", dataset_opts={"illum": "yes"}).embed(ones)
    # Paths: missing, a run that has not trained, a file that is not a checkpoint; each error names the path.
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        dinov2_cell.load(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no eval/.*teacher_checkpoint.pth"):
        dinov2_cell.load(tmp_path / "empty")
    bad = make_run(tmp_path / "bad", 5)
    ckpt = os.path.join(bad, "eval", "final", "teacher_checkpoint.pth")
    with open(ckpt, "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(ValueError, match=re.escape(f"{ckpt}: cannot load the teacher checkpoint")):
        dinov2_cell.load(ckpt)
    with pytest.raises(ValueError, match=r"dataset_opts: unknown key\(s\) \['root'\]"):
        dinov2_cell.load(world["runs"]["pct"], dataset_opts={"root": "/x"})


def test_checkpoint_file_device_and_to(world):
    run = world["runs"]["pct"]
    by_dir = dinov2_cell.load(run, device="cpu")
    by_file = dinov2_cell.load(os.path.join(run, "eval", "final", "teacher_checkpoint.pth"), device="cpu")
    sites, illum = read_well(world["data"], "A01")
    np.testing.assert_array_equal(by_dir.embed(sites[:2]), by_file.embed(sites[:2]))
    assert by_dir.to("cpu") is by_dir and by_dir.device == torch.device("cpu")
    assert next(by_dir.teacher.backbone.parameters()).device == torch.device("cpu")
    assert "channels=['DNA', 'ER', 'RNA', 'AGP', 'Mito']" in repr(by_dir)


def test_import_stays_light_and_load_is_lazy():
    script = (
        "import sys, dinov2_cell\n"
        "assert 'torch' not in sys.modules and 'dinov2_cell.api' not in sys.modules, sorted(sys.modules)\n"
        "assert 'load' in dir(dinov2_cell)\n"
        "from dinov2_cell.api import load\n"
        "assert dinov2_cell.load is load\n"
        "try:\n    dinov2_cell.no_such_name\nexcept AttributeError as e:\n    print(e)\n"
    )
    out = subprocess.run([PYTHON, "-c", script], cwd=REPO, env=child_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "has no attribute 'no_such_name'" in out.stdout


def _first_site_files(world):
    """The fluorescent TIFFs of the first site of the synthetic plates, in channel order."""
    row = pd.read_csv(next(world["data"].rglob("load_data.csv"))).iloc[0]
    return [str(world["data"] / row[f"PathName_Orig{c}"] / row[f"FileName_Orig{c}"]) for c in FLUO]


def _run_snippet(doc, heading, run_link, scope, world, tmp_path, monkeypatch):
    """Runs the first python block after `heading` in `doc` with the tiny run linked at `run_link`."""
    text = open(os.path.join(REPO, doc)).read()
    snippet = re.search(heading + r".*?```python\n(.*?)```", text, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    os.makedirs(os.path.dirname(run_link))
    os.symlink(world["runs"]["pct"], run_link)
    exec(compile(snippet, doc, "exec"), scope)
    return scope


def test_docs_snippet_runs_as_written(world, tmp_path, monkeypatch):
    scope = {"files": _first_site_files(world)}
    _run_snippet("docs/api.md", "", "runs/fluo", scope, world, tmp_path, monkeypatch)
    assert scope["features"].shape == (1, 192) and scope["model"].channels == FLUO


def test_readme_snippet_runs_as_written(world, tmp_path, monkeypatch):
    scope = {"site": np.stack([tifffile.imread(f) for f in _first_site_files(world)])}
    _run_snippet("README.md", "## Python API", "runs/paper/fluo", scope, world, tmp_path, monkeypatch)
    assert scope["features"].shape == (1, 192) and scope["model"].channels == FLUO
