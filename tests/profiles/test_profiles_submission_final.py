"""The challenge's final (scored) submission layout: ID from a hand-made metadata_test.csv, feature_1 ... feature_N;
writer, validator, the writer CLI and knn_wells on a final-layout file."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dinov2_cell.columns import BROAD, CELL_LINE, PLATE, WELL
from dinov2_cell.data.metadata import compound_plates, well_metadata
from dinov2_cell.profiles import submission

PLATES = ["BR00116991", "BR00116995"]  # one A549, one U2OS compound plate
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def profiles():
    """Every well (DMSO included) of two real compound plates with 3 random features, in reverse well order."""
    meta = well_metadata(PLATES)[[PLATE, WELL, BROAD, "Metadata_pert_iname", CELL_LINE]]
    rng = np.random.default_rng(0)
    feats = pd.DataFrame(rng.normal(size=(len(meta), 3)), columns=["z_c", "a_b", "m_x"])
    return pd.concat([meta.reset_index(drop=True), feats], axis=1).iloc[::-1].reset_index(drop=True)


def _metadata_test(profiles, plate_col="plate", well_col="well", seed=0):
    """A hand-made metadata_test.csv: one ID per compound well, shuffled, IDs with leading zeros, wells like 'A1'."""
    comp = profiles[profiles[BROAD] != ""][[PLATE, WELL]]
    rng = np.random.default_rng(seed)
    comp = comp.iloc[rng.permutation(len(comp))].reset_index(drop=True)
    return pd.DataFrame(
        {
            "ID": [f"{i:05d}" for i in range(len(comp))],
            plate_col: comp[PLATE].to_numpy(),
            well_col: [w[0] + str(int(w[1:])) for w in comp[WELL]],  # A01 -> A1
            "Metadata_cell_line": "x",  # other columns are ignored
        }
    )


@pytest.fixture()
def mt_path(tmp_path, profiles):
    path = tmp_path / "metadata_test.csv"
    _metadata_test(profiles).to_csv(path, index=False)
    return str(path)


def test_final_layout_rows_in_id_order_with_each_wells_profile(tmp_path, profiles, mt_path):
    path = submission.write_submission(profiles, tmp_path / "sub.csv", metadata_test=mt_path)
    sub = pd.read_csv(path, dtype={"ID": str})
    assert list(sub.columns) == ["ID", "feature_1", "feature_2", "feature_3"]
    mt = pd.read_csv(mt_path, dtype=str)
    assert list(sub["ID"]) == list(mt["ID"]) and sub["ID"].iloc[0].startswith("0")  # file order, leading zeros kept
    # Independent join: ID -> (plate, well "A1" -> "A01") -> profile row; feature_i is the profile's i-th column.
    key = mt["plate"] + " " + mt["well"].str[0] + mt["well"].str[1:].str.zfill(2)
    prof = profiles.assign(key=profiles[PLATE] + " " + profiles[WELL]).set_index("key")
    expected = prof.loc[key, ["z_c", "a_b", "m_x"]].to_numpy()
    assert sub[["feature_1", "feature_2", "feature_3"]].to_numpy().tolist() == expected.tolist()
    assert submission.feature_map(profiles, submission_format="final") == {
        "feature_1": "z_c",
        "feature_2": "a_b",
        "feature_3": "m_x",
    }
    assert submission.check_submission(path, metadata_test=mt_path) == []
    # The column order of the features is the profile's, not alphabetical: feature_1 is z_c.
    assert sub["feature_1"].iloc[0] == prof.loc[key.iloc[0], "z_c"]


@pytest.mark.parametrize(
    "plate_col,well_col",
    [("Metadata_Plate", "Metadata_Well"), ("Plate", "Well"), ("plate_barcode", "well_position")],
)
def test_metadata_test_columns_found_by_name(profiles, plate_col, well_col):
    mt = _metadata_test(profiles, plate_col, well_col)
    table = submission.submission_table(profiles, metadata_test=mt)
    assert len(table) == 640 and list(table["ID"]) == list(mt["ID"])


@pytest.mark.parametrize(
    "drop,what", [("plate", "no plate column"), ("well", "no well column"), ("ID", "no ID column")]
)
def test_missing_column_names_file_and_column(tmp_path, profiles, drop, what):
    path = tmp_path / "metadata_test.csv"
    _metadata_test(profiles).drop(columns=[drop]).to_csv(path, index=False)
    with pytest.raises(ValueError) as e:
        submission.write_submission(profiles, tmp_path / "sub.csv", metadata_test=path)
    assert str(path) in str(e.value) and what in str(e.value)
    assert not (tmp_path / "sub.csv").exists()


def _well(p, w):
    return p, w[0] + w[1:].zfill(2)


def test_ids_without_profile_and_wells_without_id_in_one_error(tmp_path, profiles):
    mt = _metadata_test(profiles)
    no_profile = mt.iloc[:2]  # IDs whose wells are dropped from the profiles
    no_id = mt.iloc[2:5]  # wells whose IDs are dropped from metadata_test.csv
    path = tmp_path / "metadata_test.csv"
    mt.drop(index=no_id.index).to_csv(path, index=False)
    gone = {_well(p, w) for p, w in zip(no_profile["plate"], no_profile["well"])}
    keep = [(p, w) not in gone for p, w in zip(profiles[PLATE], profiles[WELL])]
    with pytest.raises(ValueError) as e:
        submission.write_submission(profiles[keep], tmp_path / "sub.csv", metadata_test=path)
    msg = str(e.value)
    assert f"2 ID(s) of {path} without a profile" in msg
    assert "3 compound well(s) of the profiles on its plates without an ID" in msg
    assert all(i in msg for i in no_profile["ID"])
    assert all(f"{p} {w}" in msg for p, w in (_well(p, w) for p, w in zip(no_id["plate"], no_id["well"])))
    assert "\n" not in msg and not (tmp_path / "sub.csv").exists()
    # DMSO wells and wells of plates the file does not name need no ID
    other = well_metadata(["BR00116992"])[[PLATE, WELL, BROAD, "Metadata_pert_iname", CELL_LINE]]
    extra = pd.concat([profiles, other.assign(z_c=0.0, a_b=0.0, m_x=0.0)], ignore_index=True)
    table = submission.submission_table(extra, metadata_test=_metadata_test(profiles))
    assert len(table) == 640


def test_nan_or_inf_profile_refused(tmp_path, profiles, mt_path):
    for bad_value in (np.nan, np.inf):
        bad = profiles.copy()
        bad.loc[5, "a_b"] = bad_value
        with pytest.raises(ValueError, match="'a_b' has NaN/inf"):
            submission.write_submission(bad, tmp_path / "bad.csv", metadata_test=mt_path)
        assert not (tmp_path / "bad.csv").exists()


def test_default_layout_and_final_without_metadata_test(tmp_path, profiles, caplog):
    with pytest.raises(ValueError, match="final submission format needs the organisers' metadata_test.csv"):
        submission.write_submission(profiles, tmp_path / "f.csv", submission_format="final")
    with caplog.at_level(logging.WARNING, logger="dinov2_cell.profiles"):
        path = submission.write_submission(profiles, tmp_path / "j.csv")
    assert submission.detect_format(pd.read_csv(path, nrows=1)) == "january"
    assert "not the one the challenge scored" in caplog.text


def _broken(tmp_path, profiles, mt_path, kind):
    sub = submission.submission_table(profiles, metadata_test=mt_path)
    mt = submission.read_metadata_test(mt_path)
    on = mt.set_index("ID")[PLATE]
    if kind == "order":
        sub = sub[["ID", "feature_2", "feature_1", "feature_3"]]
    elif kind == "zero_based":
        sub.columns = ["ID", "feature_0", "feature_1", "feature_2"]
    elif kind == "duplicate":  # an ID twice, with different features
        sub = pd.concat([sub, sub.iloc[[3]].assign(feature_1=sub["feature_1"].iloc[3] + 1.0)], ignore_index=True)
    elif kind == "inf":
        sub.loc[7, "feature_3"] = np.inf
    elif kind == "nan":
        sub.loc[7, "feature_2"] = np.nan
    elif kind == "foreign":
        sub = pd.concat([sub, sub.iloc[[0]].assign(ID="99999")], ignore_index=True)
    elif kind == "partial":  # three IDs of one plate missing: that plate is partial, not absent
        drop = sub.index[sub["ID"].map(on).eq(PLATES[1])][:3]
        sub = sub.drop(index=drop)
    elif kind == "absent":
        sub = sub[sub["ID"].map(on).ne(PLATES[1])]
    path = tmp_path / f"{kind}.csv"
    sub.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "kind,expected,not_expected",
    [
        ("order", "column 2 is 'feature_2', expected feature_1", None),
        ("zero_based", "column 2 is 'feature_0', expected feature_1", None),
        ("duplicate", "1 duplicated ID(s) (each ID exactly once)", None),
        ("inf", "1 missing, infinite or non-numeric feature value(s), first feature_3", None),
        ("nan", "1 missing, infinite or non-numeric feature value(s), first feature_2", None),
        ("foreign", "1 ID(s) not in", None),
        ("partial", "partial plates (missing/expected): BR00116995 (3/320)", "plates absent"),
        ("absent", "plates absent: BR00116995", "partial plates"),
    ],
)
def test_check_final_finds_each_problem(tmp_path, profiles, mt_path, kind, expected, not_expected):
    problems = submission.check_submission(_broken(tmp_path, profiles, mt_path, kind), metadata_test=mt_path)
    assert len(problems) == 1 and expected in problems[0], problems
    assert not_expected is None or not_expected not in problems[0]


def test_check_final_plates_outside_and_layout_only(tmp_path, profiles, mt_path):
    good = submission.write_submission(profiles, tmp_path / "sub.csv", metadata_test=mt_path)
    (problem,) = submission.check_submission(good, plates=[PLATES[0]], metadata_test=mt_path)
    assert "320 row(s) of plate(s) outside the expected plates: BR00116995" in problem
    # without metadata_test.csv only the layout is checked: a foreign ID passes, a duplicate does not
    assert submission.check_submission(_broken(tmp_path, profiles, mt_path, "foreign")) == []
    assert len(submission.check_submission(_broken(tmp_path, profiles, mt_path, "duplicate"))) == 1


def _run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=ENV)


def test_cli_write_validate_and_knn_on_final_layout(tmp_path):
    """The writer CLI, the validator CLI and knn_wells on a final-layout file; kNN equals the January layout's."""
    from dinov2_cell.eval.knn_wells import evaluate, load_tables

    four = compound_plates("A549")[:2] + compound_plates("U2OS")[:2]
    meta = well_metadata(four)[[PLATE, WELL, BROAD, "Metadata_pert_iname"]].reset_index(drop=True)
    rng = np.random.default_rng(1)
    codes = pd.factorize(meta[BROAD])[0]
    centers = rng.normal(size=(codes.max() + 1, 8))
    noisy = centers[codes] + 0.6 * rng.normal(size=(len(meta), 8))
    table = pd.concat([meta, pd.DataFrame(noisy, columns=[f"fluo_{j}" for j in range(8)])], axis=1)
    prof, mt4, out_dir = tmp_path / "profiles.parquet", tmp_path / "mt4.csv", tmp_path / "sub"
    table.to_parquet(prof)
    _metadata_test(table, "Metadata_Plate", "Metadata_Well").to_csv(mt4, index=False)
    write = "dinov2_cell.profiles.write_submission"
    out = _run(write, prof, "--metadata-test", mt4, "--out", out_dir)
    assert out.returncode == 0 and "feature_1 = fluo_0" in out.stdout, out.stderr
    final = out_dir / "submission_final.csv"
    out = _run(write, prof, "--submission-format", "final", "--out", out_dir)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "--metadata-test" in lines[0], out.stderr
    out = _run("dinov2_cell.profiles.validate_submission", final, "--metadata-test", mt4)
    assert out.returncode == 0 and "final layout, 8 features, 1280 IDs" in out.stdout, out.stderr
    knn = "dinov2_cell.eval.knn_wells"
    out = _run(knn, final)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "--metadata-test" in lines[-1] and str(final) in lines[-1], out.stderr
    out = _run(knn, final, "--metadata-test", mt4, "--out", tmp_path / "knn")
    assert out.returncode == 0, out.stderr
    scored = json.loads((tmp_path / "knn" / "knn.json").read_text())
    january = submission.write_submission(table, tmp_path / "january.csv", submission_format="january")
    reference = evaluate(load_tables(january))
    assert set(scored["combinations"]) == {"U2OS->U2OS", "U2OS->A549", "A549->U2OS", "A549->A549"}
    assert scored["combinations"] == reference["combinations"] and scored["config"]["n_wells"] == 4 * 320


def test_writer_cli_default_layout_and_no_silent_overwrite(tmp_path, profiles, capfd):
    from dinov2_cell.profiles import write_submission

    profiles.to_parquet(tmp_path / "p.parquet")
    assert write_submission.main([str(tmp_path / "p.parquet"), "--out", str(tmp_path / "o")]) == 0
    path = tmp_path / "o" / "submission_january.csv"
    assert submission.detect_format(pd.read_csv(path, nrows=1)) == "january"
    assert "not the one the challenge scored" in capfd.readouterr().err
    with pytest.raises(FileExistsError, match="submission_january.csv exists"):
        write_submission.main([str(tmp_path / "p.parquet"), "--out", str(tmp_path / "o")])


def test_metadata_test_file_with_byte_order_mark(tmp_path, profiles):
    path = tmp_path / "metadata_test.csv"
    _metadata_test(profiles).to_csv(path, index=False, encoding="utf-8-sig")  # as spreadsheet exports write it
    assert open(path, "rb").read(3) == b"\xef\xbb\xbf"
    ids = submission.read_metadata_test(path)
    assert list(ids.columns) == ["ID", PLATE, WELL] and ids["ID"].iloc[0] == "00000" and ids[WELL].iloc[0][1:].isdigit()
