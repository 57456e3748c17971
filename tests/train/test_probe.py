"""The optional monitoring of a training run (dinov2_cell.train.probe): the kNN probe's wells, its values against an
independent recomputation from the final teacher, a run with it equal to one without, and TensorBoard scalars."""

import json
import re
import os
import subprocess
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dinov2_cell.train.probe import select_probe_sites
from helpers import PYTHON, REPO, TINY_FLUO, child_env


def test_probe_wells_are_the_positions_every_plate_has_evenly_spaced():
    rows = []
    for plate, wells in (("P1", ["A01", "A02", "A03", "A04", "B01"]), ("P2", ["A01", "A02", "A03", "A04"])):
        for well in wells:
            for site in (3, 1, 2):  # out of order: the first sites are by number
                rows.append({"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site})
    samples = pd.DataFrame(rows)
    idx, keys = select_probe_sites(samples, wells_per_plate=3, sites_per_well=2)
    # common positions A01..A04 (B01 is on P1 only); 3 evenly spaced: A01, A03 (round(1.5) = 2), A04
    assert keys == [(p, w) for p in ("P1", "P2") for w in ("A01", "A01", "A03", "A03", "A04", "A04")]
    assert samples.loc[idx, "Metadata_Site"].tolist() == [1, 2] * 6
    idx, keys = select_probe_sites(samples, wells_per_plate=99, sites_per_well=9)
    assert len(idx) == 2 * 4 * 3 and ("P1", "B01") not in keys


@pytest.fixture()
def planted_table():
    """Random well profiles with a compound signal: 3 U2OS + 2 A549 plates, 8 compounds, 2 DMSO wells per plate."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, 6))
    rows, feats = [], []
    for k, line in enumerate(["U2OS"] * 3 + ["A549"] * 2):
        for i in range(10):
            dmso = i >= 8
            rows.append(
                {
                    "Metadata_Plate": f"P{k}",
                    "Metadata_Well": f"A{i + 1:02d}",
                    "Metadata_broad_sample": "" if dmso else f"BRD-{i}",
                    "Metadata_pert_iname": "DMSO" if dmso else f"cpd{i}",
                    "Metadata_cell_line": line,
                }
            )
            feats.append((0 if dmso else centers[i]) + 1.2 * rng.normal(size=6))
    return pd.concat([pd.DataFrame(rows), pd.DataFrame(np.array(feats), columns=[f"f{j}" for j in range(6)])], axis=1)


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    from dinov2_cell.synthetic import generate_plates

    out = tmp_path_factory.mktemp("plates")
    # 2 U2OS + 2 A549 plates: the probe's kNN has plate-wise folds in both cell lines
    generate_plates(out, plates=4, wells=12, sites=2, size=48, missing_sites=0.0, seed=0, progress=False)
    return str(out)


def _train(plates, out, *opts, env=None):
    args = [
        "--config-file",
        TINY_FLUO,
        "--out",
        str(out),
        f"train.dataset_path=CPJUMP1:root={plates}:channels=fluo:normalize=percentile",
        "optim.epochs=1",
        "health.period_iterations=0",
        *opts,
    ]
    return subprocess.run(
        [PYTHON, "-m", "dinov2_cell.run.train", *args],
        cwd=REPO,
        env=env or child_env(OMP_NUM_THREADS=1),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _rows(out):
    return [json.loads(line) for line in open(out / "training_metrics.json")]


def _losses(rows):
    return [{k: v for k, v in r.items() if k.endswith("_loss")} for r in rows]


def _sklearn_lopo_accuracy(table):
    """Leave-one-plate-out 1-NN (cosine) compound accuracy per cell line, averaged, with scikit-learn."""
    from sklearn.neighbors import KNeighborsClassifier

    cpd = table[table["Metadata_pert_iname"] != "DMSO"]
    feats = [c for c in cpd.columns if not c.startswith("Metadata_")]
    scores = []
    for _, line in cpd.groupby("Metadata_cell_line"):
        hits = 0
        for plate in line["Metadata_Plate"].unique():
            train, test = line[line["Metadata_Plate"] != plate], line[line["Metadata_Plate"] == plate]
            clf = KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute")
            clf.fit(train[feats], train["Metadata_broad_sample"])
            hits += int((clf.predict(test[feats]) == test["Metadata_broad_sample"]).sum())
        scores.append(hits / len(line))
    return float(np.mean(scores))


def _recomputed_probe_accuracy(run, plates):
    """The probe's score of the final teacher, rebuilt without the probe's code: the checkpoint, the dataset's own
    images resized as in the docstring, CLS + mean patch token averaged per well, scikit-learn's 1-NN."""
    from dinov2.data import make_dataset

    from dinov2_cell.data.registry import discard_target
    from dinov2_cell.models.teacher import load_teacher, site_features
    from dinov2_cell.plugin import install

    install()
    ds = make_dataset(
        dataset_str=f"CPJUMP1:root={plates}:channels=fluo:normalize=percentile",
        transform=None,
        target_transform=discard_target,
    )
    meta = ds.site_metadata()
    first_site = meta.groupby(["Metadata_Plate", "Metadata_Well"])["Metadata_Site"].transform("min")
    first = meta[meta["Metadata_Site"] == first_site]
    teacher = load_teacher(str(run))
    images = torch.stack([torch.as_tensor(ds.get_image(int(i)), dtype=torch.float32) for i in first.index])
    images = F.interpolate(images, size=(56, 56), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        x = site_features(teacher.backbone.eval(), images).double().numpy()
    table = first.drop(columns=["Metadata_Site", "source"]).reset_index(drop=True)
    table = pd.concat([table, pd.DataFrame(x, columns=[f"f{j}" for j in range(x.shape[1])])], axis=1)
    return _sklearn_lopo_accuracy(table)


def test_knn_accuracy_against_scikit_learn(planted_table):
    from dinov2_cell.train.probe import knn_accuracy

    cpd = planted_table[planted_table["Metadata_pert_iname"] != "DMSO"]
    got = knn_accuracy(
        cpd[[c for c in cpd.columns if not c.startswith("Metadata_")]].to_numpy(float),
        cpd["Metadata_broad_sample"].to_numpy(),
        cpd["Metadata_Plate"].to_numpy(),
        cpd["Metadata_cell_line"].to_numpy(),
    )
    assert got == pytest.approx(_sklearn_lopo_accuracy(planted_table), abs=1e-12)
    assert 0.2 < got < 0.95  # noisy enough that errors occur, structured enough that hits do


def test_probe_values_and_a_run_with_it_trains_as_one_without(plates, tmp_path):
    probed = _train(plates, tmp_path / "probe", "monitoring.knn_probe_period=5")
    assert probed.returncode == 0, probed.stderr[-3000:]
    plain = _train(plates, tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr[-3000:]
    rows, plain_rows = _rows(tmp_path / "probe"), _rows(tmp_path / "plain")
    assert _losses(rows) == _losses(plain_rows)  # bit for bit: the probe draws no random number, changes nothing
    assert all("probe_knn_accuracy" not in r for r in plain_rows)
    log = (tmp_path / "probe" / "logs" / "log.txt").read_text()
    probes = [(int(m[0]), float(m[1])) for m in re.findall(r"probe \[(\d+)\]: kNN accuracy ([\d.]+) %", log)]
    assert [it for it, _ in probes] == [0, 4, 9]  # the first iteration, every 5th, the last
    assert "kNN probe: 48 sites of 48 wells on 4 plates" in log and "kNN probe: 3 probes" in log
    # training_metrics.json rows carry the latest probe (iterations 0 and 9 are logged rows)
    by_it = {r["iteration"]: r for r in rows}
    assert by_it[0]["probe_iteration"] == 0 and by_it[9]["probe_iteration"] == 9
    assert by_it[9]["probe_knn_accuracy"] == pytest.approx(probes[-1][1] / 100, abs=5e-4)
    # the last probe ran on the final teacher: its score, recomputed independently
    # (the meters hold float32: one well more or less would move it by 1/80 or more)
    assert by_it[9]["probe_knn_accuracy"] == pytest.approx(
        _recomputed_probe_accuracy(tmp_path / "probe", plates), abs=1e-6
    )
    # the training report shows it
    from dinov2_cell.report.training import read_training

    assert [p["probe_iteration"] for p in read_training(str(tmp_path / "probe")).probe] == [0, 4, 9]


BLOCK_TENSORBOARD = textwrap.dedent(
    """
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tensorboard":
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    """
)


def test_tensorboard_without_the_package_stops_before_training(plates, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCK_TENSORBOARD)
    env = child_env(OMP_NUM_THREADS=1, PYTHONPATH=str(tmp_path / "site"))
    proc = _train(plates, tmp_path / "run", "monitoring.tensorboard=true", env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "monitoring.tensorboard=true needs the tensorboard package" in errors[0]
    assert "pip install tensorboard" in errors[0] and "monitoring.tensorboard=false" in errors[0]
    assert not (tmp_path / "run" / "training_metrics.json").exists()


def test_tensorboard_scalars_are_the_logged_values(plates, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = _train(plates, tmp_path / "run", "monitoring.tensorboard=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    rows = _rows(tmp_path / "run")
    events = acc.Scalars("total_loss")
    assert [e.step for e in events] == [r["iteration"] for r in rows]
    np.testing.assert_allclose([e.value for e in events], [r["total_loss"] for r in rows], rtol=1e-6)
    assert os.listdir(tmp_path / "run" / "tensorboard")
