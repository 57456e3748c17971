"""`knn_wells --report DIR`: the per-compound table against the kNN/mAP outputs and an independent 1-NN, the
figures, the annotated map_activity.csv, and the refusal to overwrite an earlier report."""

import subprocess

import numpy as np
import pandas as pd
import pytest

from helpers import PYTHON, REPO, child_env

COMBOS = ("U2OS->U2OS", "U2OS->A549", "A549->U2OS", "A549->A549")


def _knn_wells(*args):
    return subprocess.run(
        [PYTHON, "-m", "dinov2_cell.eval.knn_wells", *map(str, args)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def scored(planted_profiles, tmp_path_factory):
    """One CLI run on planted profiles (3 U2OS + 3 A549 plates, 12 compounds, 6 DMSO wells each) with --out and
    --report."""
    tmp = tmp_path_factory.mktemp("scored")
    df = planted_profiles(plates=(("U2OS", 3), ("A549", 3)), noise=1.5, structure=1.0, seed=5)
    df.to_csv(tmp / "profiles.csv", index=False)
    proc = _knn_wells(
        tmp / "profiles.csv",
        "--folds",
        "3",
        "--null-size",
        "200",
        "--map-cache-dir",
        tmp / "cache",
        "--out",
        tmp / "out",
        "--report",
        tmp / "report",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return df, tmp, proc.stdout


def _cosine_1nn_hits(df, folds):
    """Per (compound, test cell line, combination): correct test wells, by brute-force cosine 1-NN in numpy."""
    cpd = df[df["Metadata_pert_iname"] != "DMSO"].reset_index(drop=True)
    x = cpd[[c for c in cpd.columns if not c.startswith("Metadata_")]].to_numpy(float)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y, plate = cpd["Metadata_broad_sample"].to_numpy(), cpd["Metadata_Plate"].to_numpy()
    hits = {}
    for _, f in folds.iterrows():
        tr, te = np.isin(plate, f["train_plates"].split(";")), np.isin(plate, f["test_plates"].split(";"))
        pred = y[tr][np.argmax(x[te] @ x[tr].T, axis=1)]
        for label, ok in zip(y[te], pred == y[te]):
            key = (label, f["target"], f["combination"])
            hits[key] = hits.get(key, 0) + int(ok)
    return hits


def test_compound_table_matches_knn_and_map_outputs(scored):
    df, tmp, stdout = scored
    table = pd.read_csv(tmp / "report" / "compounds.csv")
    assert (tmp / "out" / "compounds.csv").read_text() == (tmp / "report" / "compounds.csv").read_text()
    assert list(table.columns[:8]) == [
        "Metadata_broad_sample",
        "Metadata_pert_iname",
        "Metadata_target",
        "Metadata_cell_line",
        "mAP",
        "p_value",
        "corrected_p_value",
        "retrieved",
    ]
    assert len(table) == 24  # 12 compounds x 2 cell lines
    # annotations: the planted compound i is cpd{i} with target T{i // 2}
    idx = table["Metadata_broad_sample"].str[4:].astype(int)
    assert (table["Metadata_pert_iname"] == "cpd" + idx.astype(str)).all()
    assert (table["Metadata_target"] == "T" + (idx // 2).astype(str)).all()
    # mAP columns: the rows of map_activity.csv
    act = pd.read_csv(tmp / "out" / "map_activity.csv")
    merged = table.merge(act, on=["Metadata_broad_sample", "Metadata_cell_line"], validate="one_to_one")
    assert len(merged) == 24
    np.testing.assert_array_equal(merged["mAP"], merged["mean_average_precision"])
    np.testing.assert_array_equal(merged["corrected_p_value_x"], merged["corrected_p_value_y"])
    np.testing.assert_array_equal(merged["retrieved"], merged["below_corrected_p"])
    # kNN columns: an independent cosine 1-NN over the folds of knn_folds.csv, and the folds' accuracies
    folds = pd.read_csv(tmp / "out" / "knn_folds.csv")
    ref = _cosine_1nn_hits(df, folds)
    for _, r in table.iterrows():
        for combo in COMBOS:
            hits, wells = r[f"knn_hits_{combo}"], r[f"knn_wells_{combo}"]
            if combo.endswith(r["Metadata_cell_line"]):
                assert (hits, wells) == (ref[(r["Metadata_broad_sample"], r["Metadata_cell_line"], combo)], 3)
            else:
                assert pd.isna(hits) and pd.isna(wells)
    for combo, g in folds.groupby("combination"):
        assert table[f"knn_hits_{combo}"].sum() == round((g["accuracy"] * g["n_test"]).sum())
    # the compound hits are not all equal: a table of constants would not tell compounds apart
    assert table[[f"knn_hits_{c}" for c in COMBOS]].stack().nunique() > 1
    assert 0 < table["retrieved"].sum() < 24


def test_map_activity_csv_carries_name_target_and_cell_line(scored):
    _, tmp, _ = scored
    act = pd.read_csv(tmp / "out" / "map_activity.csv")
    assert list(act.columns[:4]) == [
        "Metadata_broad_sample",
        "Metadata_pert_iname",
        "Metadata_target",
        "Metadata_cell_line",
    ]
    idx = act["Metadata_broad_sample"].str[4:].astype(int)
    assert (act["Metadata_pert_iname"] == "cpd" + idx.astype(str)).all()
    assert (act["Metadata_target"] == "T" + (idx // 2).astype(str)).all()
    assert sorted(act["Metadata_cell_line"].unique()) == ["A549", "U2OS"]


def test_report_files(scored):
    _, tmp, stdout = scored
    report = tmp / "report"
    for name in ("map_vs_q.png", "knn_by_combination.png", "embedding_pca.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (report / "README.md").read_text()
    table = pd.read_csv(report / "compounds.csv")
    best = table.sort_values("mAP", ascending=False).iloc[0]
    assert f"| {best['Metadata_broad_sample']} | {best['Metadata_pert_iname']} |" in md
    n_ret = int(table["retrieved"].sum())
    assert f"{n_ret} of 24 compound x cell line retrieved" in md
    assert f"report: {report / 'README.md'}" in stdout


def test_an_earlier_report_is_not_overwritten(scored):
    _, tmp, _ = scored
    before = (tmp / "report" / "compounds.csv").read_bytes()
    proc = _knn_wells(tmp / "profiles.csv", "--folds", "3", "--report", tmp / "report")
    assert proc.returncode == 2
    assert "refusing to overwrite (pass --overwrite)" in proc.stderr and "kNN compound" not in proc.stdout
    assert (tmp / "report" / "compounds.csv").read_bytes() == before
