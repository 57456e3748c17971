"""Synthetic plates: output pinned per seed, per-site true cell counts, the ``python -m dinov2_cell.synthetic`` CLI."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dinov2_cell.data.cpjump1_dataset import CPJUMP1Dataset
from dinov2_cell.synthetic import generate_plates, render_site
from dinov2_cell.synthetic.__main__ import cli
from dinov2_cell.synthetic.biology import stable_key

TINY = dict(
    plates=["BR00116991"], wells=["A01", "B02"], sites=2, size=16, seed=4, illum=True, missing_sites=0.5, progress=False
)
# SHA-256 over (relative path, bytes) of every file but the manifest and the per-site truth, for TINY, as written by
# the generator with the calibrated phenotype defaults (benchmarks/calibration.py): a change of any image, LoadData
# CSV, illumination function or truth table shows here.
TINY_SHA256 = "918dcc998d602758e975170b47105c1deba057d100ee6d54068c218ce944b4bd"


def _tree_hash(root, skip=("synthetic_manifest.json", "synthetic_sites.csv")):
    h = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if rel in skip:
                continue
            h.update(rel.encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_output_is_pinned_per_seed(tmp_path):
    res = generate_plates(tmp_path / "a", **TINY)
    assert _tree_hash(res.out_dir) == TINY_SHA256
    assert json.loads((tmp_path / "a" / "synthetic_manifest.json").read_text())["generator"] == "dinov2_cell.synthetic"


def test_site_truth_lists_every_site_with_its_cell_count(tmp_path):
    res = generate_plates(tmp_path / "a", plates=["BR00116995"], wells=3, sites=3, size=48, seed=2, progress=False)
    sites = pd.read_csv(tmp_path / "a" / "synthetic_sites.csv", dtype={"Metadata_Plate": str})
    ds = CPJUMP1Dataset(root=res.out_dir, channels="DNA")
    key = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    assert sites[key].reset_index(drop=True).equals(ds.index[key].reset_index(drop=True))
    # recount one site independently: re-render it with the generator's own seed and count centres in the image
    row = sites.iloc[4]
    from dinov2_cell.data import metadata as md
    from dinov2_cell.synthetic.biology import DEFAULT_PHENOTYPE, N_EFFECTS, compound_effect

    layout = md.compound_layout().set_index("Metadata_Well").loc[row.Metadata_Well]
    effect, _ = compound_effect(
        layout["Metadata_broad_sample"], layout["Metadata_target"], layout["Metadata_pert_type"], "U2OS", 2
    )
    effect = effect + np.random.default_rng([2, stable_key("well", row.Metadata_Plate, row.Metadata_Well)]).normal(
        0, DEFAULT_PHENOTYPE.well_noise, N_EFFECTS
    )
    rng = np.random.default_rng([2, stable_key("site", row.Metadata_Plate, row.Metadata_Well, int(row.Metadata_Site))])
    truth = {}
    render_site(48, "U2OS", effect, rng, False, truth=truth)
    inside = ((truth["centres"] >= 0) & (truth["centres"] < 48)).all(axis=1).sum()
    assert row.n_cells == inside > 0
    assert sites["n_cells"].between(1, 60).all()


def _run(args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "dinov2_cell.synthetic", *args], capture_output=True, text=True, timeout=timeout
    )


def test_cli_smoke_and_bad_input(tmp_path, capsys):
    out = tmp_path / "cli"
    tiny = ["--out", str(out), "--num-plates", "2", "--wells", "3", "--sites", "2", "--size", "16", "--no-progress"]
    ok = _run(tiny)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["n_images"] == 2 * 3 * 2 * 8 and len(summary["plates"]) == 2
    again = _run(tiny)  # the plates exist: refused without --overwrite, one line, exit 2
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 2 and len(lines) == 1 and lines[0].startswith("python -m dinov2_cell.synthetic: error:")
    assert "--overwrite" in lines[0] and "Traceback" not in again.stderr
    assert _run(tiny + ["--overwrite"]).returncode == 0
    # in-process: an unknown barcode names the barcode
    assert cli(["--out", str(tmp_path / "x"), "--plates", "BR1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and "BR1" in err[0]
    assert cli(["--out", str(tmp_path / "x"), "--plates", "BR00116991", "--num-plates", "2"]) == 2  # exclusive
    # a bad --phenotype override names the setting
    capsys.readouterr()
    assert cli(["--out", str(tmp_path / "y"), "--phenotype", "strenght=2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "strenght=2" in err[0] and "unknown key" in err[0]


def test_phenotype_settings_scale_and_switch_off_families(tmp_path):
    from dinov2_cell.synthetic.biology import PHENOTYPE_FAMILIES, PhenotypeSettings, compound_effect

    base = PhenotypeSettings()
    args = ("BRD-K1", "T1", "trt", "A549", 3)
    e, pot = compound_effect(*args, base)
    doubled = PhenotypeSettings.from_overrides([f"strength={2 * base.strength}"])
    e2, pot2 = compound_effect(*args, doubled)
    np.testing.assert_allclose(e2, 2 * e, rtol=1e-12)
    assert pot2 == 2 * pot
    only_count = PhenotypeSettings.from_overrides([f"family.{f}=0" for f in PHENOTYPE_FAMILIES if f != "count"])
    e3, _ = compound_effect(*args, only_count)
    assert e3[0] == e[0] and np.count_nonzero(e3) == 1
    # an inactive share of 1 leaves every non-control compound at most inactive_potency x strength x sensitivity
    inactive = PhenotypeSettings.from_overrides(["inactive_share=1", "line_sensitivity_sd=0"])
    assert all(
        compound_effect(f"BRD-{i}", "T", "trt", "U2OS", 0, inactive)[1] <= inactive.inactive_potency * inactive.strength
        for i in range(50)
    )
    assert compound_effect("BRD-C", "T", "control", "U2OS", 0, inactive)[1] >= inactive.control_potency[0] * 0.3
    res = generate_plates(
        tmp_path / "p", plates=["BR00116991"], wells=2, sites=1, size=16, phenotype=doubled, progress=False
    )
    manifest = json.loads((tmp_path / "p" / "synthetic_manifest.json").read_text())
    assert manifest["phenotype"]["strength"] == 2 * base.strength and res.n_images == 16
    for bad in (["family.colour=1"], ["inactive_share=2"], ["active_potency=0.5"], ["strength"]):
        with pytest.raises(ValueError, match="phenotype|inactive_share|famil"):
            PhenotypeSettings.from_overrides(bad)
