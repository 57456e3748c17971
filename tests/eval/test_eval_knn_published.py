"""knn_wells on CPJUMP1's published per-plate CellProfiler profiles: several files or a folder, cell lines joined
from the packaged metadata."""

import os
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
import pytest

from dinov2_cell.data.metadata import well_metadata
from dinov2_cell.eval.knn_wells import evaluate, load_tables

PLATES = {"BR00116991": "A549", "BR00116992": "A549", "BR00116995": "U2OS", "BR00117010": "U2OS"}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The column layout of <plate>_normalized_feature_select_negcon_batch.csv.gz (no cell line column).
META = [
    "Metadata_broad_sample",
    "Metadata_solvent",
    "Metadata_Plate",
    "Metadata_Well",
    "Metadata_Assay_Plate_Barcode",
    "Metadata_Plate_Map_Name",
    "Metadata_pert_iname",
    "Metadata_target",
    "Metadata_pert_type",
    "Metadata_control_type",
]
FEATURES = [
    "Cells_AreaShape_Area",
    "Cells_Intensity_MeanIntensity_DNA",
    "Cells_Correlation_Pearson_DNA_ER",
    "Cytoplasm_Granularity_1_Mito",
    "Cytoplasm_RadialDistribution_FracAtD_RNA_1of4",
    "Nuclei_AreaShape_FormFactor",
    "Nuclei_Intensity_IntegratedIntensity_AGP",
    "Nuclei_Texture_Contrast_ER_3_00_256",
]


def write_published(folder, n_wells=40):
    """One gzipped CSV per plate: DMSO wells with an empty broad sample, compounds with a reproducible profile."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for plate in PLATES:
        meta = well_metadata([plate]).iloc[:n_wells]
        centres = {
            b: np.random.default_rng(zlib.crc32(b.encode())).normal(size=len(FEATURES)) * 3
            for b in meta["Metadata_broad_sample"]
        }
        df = pd.DataFrame(
            {
                "Metadata_broad_sample": meta["Metadata_broad_sample"].replace("", np.nan).to_numpy(),
                "Metadata_solvent": "DMSO",
                "Metadata_Plate": plate,
                "Metadata_Well": meta["Metadata_Well"].to_numpy(),
                "Metadata_Assay_Plate_Barcode": plate,
                "Metadata_Plate_Map_Name": meta["Metadata_Plate_Map_Name"].to_numpy(),
                "Metadata_pert_iname": meta["Metadata_pert_iname"].to_numpy(),
                "Metadata_target": meta["Metadata_target"].to_numpy(),
                "Metadata_pert_type": meta["Metadata_pert_type"].to_numpy(),
                "Metadata_control_type": meta["Metadata_control_type"].to_numpy(),
            }
        )
        vals = np.stack([centres[b] for b in meta["Metadata_broad_sample"]]) + rng.normal(
            0, 0.3, (len(meta), len(FEATURES))
        )
        for j, f in enumerate(FEATURES):
            df[f] = vals[:, j]
        path = os.path.join(folder, f"{plate}_normalized_feature_select_negcon_batch.csv.gz")
        df[META + FEATURES].to_csv(path, index=False)
        paths.append(path)
    return paths


def test_published_files_get_cell_lines_and_score(tmp_path):
    paths = write_published(tmp_path / "profiles")
    table = load_tables([str(tmp_path / "profiles")])
    assert sorted(table["Metadata_Plate"].unique()) == sorted(PLATES)
    lines = table.groupby("Metadata_Plate")["Metadata_cell_line"].first().to_dict()
    assert lines == PLATES
    assert list(table.columns[-len(FEATURES) :]) == FEATURES
    # DMSO wells (empty broad sample in the file) are recognised; the planted compounds are retrieved
    res = evaluate(table, n_folds=2)
    assert res["mean"]["accuracy"] > 0.8
    same = load_tables(paths)
    pd.testing.assert_frame_equal(same, table)


def test_unknown_plate_is_named(tmp_path):
    paths = write_published(tmp_path / "p")
    df = pd.read_csv(paths[0])
    df["Metadata_Plate"] = "XX000"
    bad = tmp_path / "bad.csv.gz"
    df.to_csv(bad, index=False)
    with pytest.raises(ValueError, match="bad.csv.gz"):
        load_tables([str(bad)])
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tables([str(tmp_path / "nope")])


def test_cli_accepts_several_files_and_a_folder(tmp_path):
    paths = write_published(tmp_path / "profiles")
    env = {**os.environ, "PYTHONPATH": REPO}
    base = [sys.executable, "-m", "dinov2_cell.eval.knn_wells"]
    r = subprocess.run(
        base + paths + ["--folds", "2", "--normalize", "mad_robustize"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "U2OS->A549" in r.stdout
    r = subprocess.run(
        base + [str(tmp_path / "profiles"), "--folds", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(
        base + [str(tmp_path / "empty_nope")], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert r.returncode == 2 and "error:" in r.stderr and "empty_nope" in r.stderr
