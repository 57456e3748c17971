"""Contract of dinov2_cell.profiles.submission: the full text of each error message (file, column, IDs, wells), every
problem reported together, each option's effect and the edge cases of both layouts. Expected values are written by
hand from small synthetic tables (and, for the January layout, from the packaged plate map)."""

import gzip
import logging

import numpy as np
import pandas as pd
import pytest

from dinov2_cell.columns import BROAD, PLATE, WELL
from dinov2_cell.data.metadata import well_metadata
from dinov2_cell.profiles import submission as sub
from dinov2_cell.profiles import validate_submission
from dinov2_cell.profiles import write_submission as write_cli

P1, P2 = "BR00116991", "BR00116992"  # two real compound plates (January layout)
HINT = " (is metadata_test.csv from the same plates?)"
PARTIAL = " (use --plates to check a partial submission)"


def _bare(keys, a=None, b=None):
    """A profile table with only plate, well and features a, b (no column telling controls apart)."""
    n = len(keys)
    return pd.DataFrame(
        {
            PLATE: [p for p, _ in keys],
            WELL: [w for _, w in keys],
            "a": np.arange(n, dtype=float) + 0.5 if a is None else a,
            "b": -np.arange(n, dtype=float) if b is None else b,
        }
    )


def _mt(rows, cols=("ID", "plate", "well")):
    return pd.DataFrame(rows, columns=list(cols), dtype=str)


@pytest.fixture()
def logs():
    """Records of the dinov2_cell.profiles logger (INFO and up), whatever handlers other tests installed."""
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    log = logging.getLogger("dinov2_cell.profiles")
    handler, level = Keep(logging.INFO), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield records
    log.removeHandler(handler)
    log.setLevel(level)


# --- formats, names, wells -------------------------------------------------------------------------------------------


def test_format_errors_and_defaults():
    assert sub.resolve_format(None) == "january" and sub.resolve_format(None, "m.csv") == "final"
    assert sub.resolve_format("january", "m.csv") == "january"
    unknown = "unknown submission format 'may'; choose from ['final', 'january']"
    for call in (lambda: sub.resolve_format("may"), lambda: sub.feature_names(2, "may")):
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == unknown
    with pytest.raises(ValueError) as e:
        sub.resolve_format("final")
    assert str(e.value) == (
        "the final submission format needs the organisers' metadata_test.csv (--metadata-test FILE): its IDs are not "
        "public and are never guessed; --submission-format january writes the January layout instead"
    )
    assert sub.feature_names(3) == ["feature_0", "feature_1", "feature_2"]
    assert sub.feature_names(2, "final") == ["feature_1", "feature_2"]


def test_feature_map_options_and_no_feature_error():
    prof = _bare([("PA", "A01")])
    assert sub.feature_map(prof) == {"feature_0": "a", "feature_1": "b"}
    assert sub.feature_map(prof, ["b"]) == {"feature_0": "b"}
    assert sub.feature_map(prof, ["b", "a"], "final") == {"feature_1": "b", "feature_2": "a"}
    with pytest.raises(ValueError) as e:
        sub.feature_map(prof[[PLATE, WELL]])
    assert (
        str(e.value) == "submission: no numeric feature column (non-Metadata_ numeric columns); non-numeric others: []"
    )


def test_canonical_well():
    assert [sub.canonical_well(w) for w in ("a1", " B7 ", "A001", "p24", "AB3")] == ["A01", "B07", "A01", "P24", "AB03"]
    with pytest.raises(ValueError) as e:
        sub.canonical_well("A-1")
    assert str(e.value) == "'A-1' is not a well name (e.g. A01)"


def test_detect_format_needs_exact_first_columns():
    # none of these is a layout: too few columns, or feature_1 / feature_0 not at its place
    for cols in (["ID"], ["a", "b"], ["x", "feature_1"], ["feature_1", "ID"], ["ID", "x", "feature_1"]):
        assert sub.detect_format(pd.DataFrame(columns=cols)) is None
    for cols in ([BROAD, PLATE, WELL], ["a", "b", "c", "feature_0"], [BROAD, PLATE, WELL, "feature_1"]):
        assert sub.detect_format(pd.DataFrame(columns=cols)) is None


def test_detect_format_layouts():
    assert sub.detect_format(pd.DataFrame(columns=["ID", "feature_1"])) == "final"
    assert sub.detect_format(pd.DataFrame(columns=["ID", "feature_1", "feature_2"])) == "final"
    assert sub.detect_format(pd.DataFrame(columns=[BROAD, PLATE, WELL, "feature_0"])) == "january"


# --- metadata_test.csv -----------------------------------------------------------------------------------------------


def test_metadata_test_read_as_text_tsv_and_bom(tmp_path):
    tsv = tmp_path / "mt.tsv"
    tsv.write_text("ID\tplate_barcode\twell_position\n007\tPA\ta1\nNA\tPB\tB012\n")
    out = sub.read_metadata_test(tsv)
    assert out.to_dict("list") == {"ID": ["007", "NA"], PLATE: ["PA", "PB"], WELL: ["A01", "B12"]}
    # a spreadsheet's TSV export with decimal commas: as many commas as tabs per line, still split on tabs
    tsv.write_text("ID\tplate\twell\tdose (uM, decimal comma)\n1\tPA\tA01\t1,5\n2\tPA\tA02\t0,5\n")
    assert sub.read_metadata_test(tsv).to_dict("list") == {"ID": ["1", "2"], PLATE: ["PA", "PA"], WELL: ["A01", "A02"]}
    bom = tmp_path / "mt.csv"
    bom.write_text("ID,Metadata_Plate,Metadata_Well\n1,PA,C3\n", encoding="utf-8-sig")
    assert sub.read_metadata_test(bom).to_dict("list") == {"ID": ["1"], PLATE: ["PA"], WELL: ["C03"]}


def test_metadata_test_errors_name_file_column_and_rows(tmp_path):
    path = tmp_path / "mt.csv"
    path.write_text("ID,plate,well\na,PA,A01\n,PA,A02\nc,PA,A03\n,PA,A04\n")
    with pytest.raises(ValueError) as e:  # an empty field stays empty (not NaN): the row is reported
        sub.read_metadata_test(path)
    assert str(e.value) == f"{path}: 2 row(s) with an empty ID or plate, first at row 3"
    path.write_text("ID,plate,well\na,PA,A01\nb,PA,A-1\n")
    with pytest.raises(ValueError) as e:
        sub.read_metadata_test(path)
    assert str(e.value) == f"{path}: column 'well': 'A-1' is not a well name (e.g. A01)"
    missing = tmp_path / "none.csv"
    with pytest.raises(FileNotFoundError) as e:
        sub.read_metadata_test(missing)
    assert str(e.value) == f"no such metadata_test file: {missing}"


def test_metadata_test_table_errors():
    with pytest.raises(ValueError) as e:
        sub.read_metadata_test(_mt([["a", "PA", "A01"], ["b", "", "A02"]]))
    assert str(e.value) == "metadata_test: 1 row(s) with an empty ID or plate, first at row 3"
    with pytest.raises(ValueError) as e:
        sub.read_metadata_test(_mt([["", "PA", "A01"]]))
    assert str(e.value) == "metadata_test: 1 row(s) with an empty ID or plate, first at row 2"
    rows = [["a", "PA", "A01"], ["b", "PA", "A02"], ["a", "PA", "A03"], ["b", "PA", "A04"], ["a", "PA", "A05"]]
    with pytest.raises(ValueError) as e:
        sub.read_metadata_test(_mt(rows))
    assert str(e.value) == "metadata_test: 5 rows share an ID, e.g. a, b"
    rows = [["a", "PA", "A1"], ["b", "PA", "A01"], ["c", "PB", "A01"], ["d", "PA", "a001"], ["e", "PB", "B2"]]
    with pytest.raises(ValueError) as e:
        sub.read_metadata_test(_mt(rows, ("id", "Plate_Barcode", "well_position")))
    assert str(e.value) == "metadata_test: 3 rows share a plate and well ('Plate_Barcode', 'well_position'): PA A01"


@pytest.mark.parametrize(
    "drop,what,names",
    [
        ("ID", "ID", "ID"),
        ("plate", "plate", "Metadata_Plate, plate, plate_barcode, Metadata_Barcode, barcode"),
        ("well", "well", "Metadata_Well, well, well_position, Metadata_Well_Position"),
    ],
)
def test_metadata_test_missing_column_lists_names_and_12_columns(drop, what, names):
    table = _mt([["a", "PA", "A01"]]).drop(columns=[drop])
    for i in range(12):
        table[f"c{i}"] = "x"
    cols = list(table.columns)[:12]
    with pytest.raises(ValueError) as e:
        sub.read_metadata_test(table)
    assert str(e.value) == f"metadata_test: no {what} column (looked for {names}, any case); its columns: {cols}"


# --- writing the final layout ----------------------------------------------------------------------------------------

KEYS = [("PA", "A01"), ("PA", "b2"), ("PB", "H12"), ("PB", "C03"), ("PC", "A01")]
MT = [["007", "PB", "C3"], ["x1", "PA", "A1"], ["10", "PA", "B02"], ["z", "PB", "h12"]]


def test_final_table_rows_ids_and_features(logs):
    prof = _bare(KEYS, a=[1.5, 2.5, 3.5, 4.5, 5.5], b=[-1.0, -2.0, -3.0, -4.0, -5.0])
    table = sub.submission_table(prof, metadata_test=_mt(MT))
    assert table.to_dict("list") == {
        "ID": ["007", "x1", "10", "z"],
        "feature_1": [4.5, 1.5, 2.5, 3.5],
        "feature_2": [-4.0, -1.0, -2.0, -3.0],
    }
    assert [r.getMessage() for r in logs] == [
        "submission: 1 profile well(s) without an ID left out (controls, other plates)"
    ]
    table = sub.submission_table(prof, ["b", "a"], submission_format="final", metadata_test=_mt(MT))
    assert table.to_dict("list") == {
        "ID": ["007", "x1", "10", "z"],
        "feature_1": [-4.0, -1.0, -2.0, -3.0],
        "feature_2": [4.5, 1.5, 2.5, 3.5],
    }
    # the January layout when asked for, even with a metadata_test.csv (bare table: no broad_sample column)
    with pytest.raises(ValueError) as e:
        sub.submission_table(prof, submission_format="january", metadata_test=_mt(MT))
    assert str(e.value) == (
        "submission: missing metadata column(s) ['Metadata_broad_sample']; present: ['Metadata_Plate', 'Metadata_Well']"
    )


def test_final_and_january_features_are_float64_even_from_integers(tmp_path):
    prof = _bare([("PA", "A01"), ("PA", "A02")], a=[1, 2], b=[3, 4]).assign(**{BROAD: ["BRD-1", "BRD-2"]})
    final = sub.submission_table(prof, metadata_test=_mt([["i", "PA", "A02"], ["j", "PA", "A01"]]))
    jan = sub.submission_table(prof, submission_format="january")
    assert list(final.dtypes[1:]) == [np.float64] * 2 and list(jan.dtypes[3:]) == [np.float64] * 2
    path = sub.write_submission(prof, tmp_path / "s.csv", metadata_test=_mt([["i", "PA", "A02"], ["j", "PA", "A01"]]))
    assert open(path).read() == "ID,feature_1,feature_2\ni,2.0,4.0\nj,1.0,3.0\n"


def test_final_ids_without_profile_and_wells_without_id_one_message(tmp_path):
    mt = _mt([["i1", "PA", "A01"], ["i2", "PA", "A02"], ["i3", "PB", "A01"], ["i4", "PB", "A02"], ["i5", "PA", "A3"]])
    prof = _bare([("PA", "A1"), ("PA", "A04"), ("PB", "A01"), ("PB", "A05"), ("PA", "A03"), ("PC", "A01")])
    lost = "2 ID(s) of {} without a profile (by plate: PA (1), PB (1); e.g. i2 = PA A02, i4 = PB A02)"
    extra = (
        "2 compound well(s) of the profiles on its plates without an ID (by plate: PA (1), PB (1); e.g. PA A04, PB A05)"
    )
    with pytest.raises(ValueError) as e:
        sub.submission_table(prof, metadata_test=mt)
    assert str(e.value) == "submission: " + lost.format("metadata_test") + "; " + extra + HINT
    path = tmp_path / "metadata_test.csv"
    mt.to_csv(path, index=False)
    with pytest.raises(ValueError) as e:
        sub.write_submission(prof, tmp_path / "s.csv", metadata_test=path)
    assert str(e.value) == "submission: " + lost.format(path) + "; " + extra + HINT
    assert not (tmp_path / "s.csv").exists()


def test_final_only_lost_ids_or_only_extra_wells():
    mt = _mt([[f"i{k}", "PA", f"B{k}"] for k in range(1, 8)] + [["j", "PA", "A01"]])
    with pytest.raises(ValueError) as e:
        sub.submission_table(_bare([("PA", "A01")]), metadata_test=mt)
    assert str(e.value) == (
        "submission: 7 ID(s) of metadata_test without a profile (by plate: PA (7); e.g. i1 = PA B01, i2 = PA B02, "
        "i3 = PA B03, i4 = PA B04, i5 = PA B05 (and 2 more))" + HINT
    )
    # with a compound/DMSO column only compound wells need an ID
    prof = _bare([("PA", "A01"), ("PA", "A02"), ("PA", "A03")]).assign(**{BROAD: ["BRD-1", "", "BRD-2"]})
    with pytest.raises(ValueError) as e:
        sub.submission_table(prof, metadata_test=_mt([["j", "PA", "A01"]]))
    assert str(e.value) == (
        "submission: 1 compound well(s) of the profiles on its plates without an ID (by plate: PA (1); e.g. PA A03)"
        + HINT
    )


def test_final_empty_profiles_every_id_lost():
    prof = _bare([])
    with pytest.raises(ValueError) as e:
        sub.submission_table(prof, metadata_test=_mt([["x", "PA", "A01"], ["y", "PB", "B2"]]))
    assert str(e.value) == (
        "submission: 2 ID(s) of metadata_test without a profile (by plate: PA (1), PB (1); e.g. x = PA A01, "
        "y = PB B02)" + HINT
    )


def test_final_profile_errors():
    mt = _mt([["x", "PA", "A01"]])
    with pytest.raises(ValueError) as e:
        sub.submission_table(_bare([("PA", "A1"), ("PA", "A01")]), metadata_test=mt)
    assert str(e.value) == "submission: 2 rows name the same well once written canonically (e.g. A1, A01)"
    with pytest.raises(ValueError) as e:
        sub.submission_table(_bare([("PA", "Z9x")]), metadata_test=mt)
    assert str(e.value) == "submission: column Metadata_Well: 'Z9x' is not a well name (e.g. A01)"
    with pytest.raises(ValueError) as e:
        sub.submission_table(_bare([("PA", "A01")]).drop(columns=[WELL]), metadata_test=mt)
    assert str(e.value) == "submission: missing metadata column(s) ['Metadata_Well']; present: ['Metadata_Plate']"


def test_write_options_overwrite_gzip_columns_and_layout(tmp_path):
    prof = _bare([("PA", "A01"), ("PA", "A02")]).assign(**{BROAD: ["BRD-1", "BRD-2"]})
    mt = _mt([["i", "PA", "A02"], ["j", "PA", "A01"]])
    path = tmp_path / "s.csv"
    path.write_text("old\n")
    with pytest.raises(FileExistsError):
        sub.write_submission(prof, path, metadata_test=mt)
    assert path.read_text() == "old\n"
    assert sub.write_submission(prof, path, True, ["b"], metadata_test=mt) == str(path)
    assert path.read_text() == "ID,feature_1\ni,-1.0\nj,-0.0\n"
    # explicit January layout with a metadata_test.csv at hand
    sub.write_submission(prof, path, overwrite=True, submission_format="january", metadata_test=mt)
    assert path.read_text().splitlines() == [
        "Metadata_broad_sample,Metadata_Plate,Metadata_Well,feature_0,feature_1",
        "BRD-1,PA,A01,0.5,-0.0",
        "BRD-2,PA,A02,1.5,-1.0",
    ]
    gz = sub.write_submission(prof, tmp_path / "s.csv.gz", feature_cols=["a"], metadata_test=mt)
    with open(gz, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # compressed, as the name says
    with gzip.open(gz, "rt") as f:
        assert f.read() == "ID,feature_1\ni,1.5\nj,0.5\n"


def test_write_warns_only_for_the_default_january_layout(tmp_path, logs):
    prof = _bare([("PA", "A01")]).assign(**{BROAD: ["BRD-1"]})
    path = tmp_path / "j.csv"
    sub.write_submission(prof, path)
    assert [(r.levelno, r.getMessage()) for r in logs] == [
        (
            logging.WARNING,
            f"{path}: January layout (Metadata_broad_sample, Metadata_Plate, Metadata_Well, feature_0 ...), not the "
            "one the challenge scored; write the final layout (ID, feature_1 ...) with the organisers' "
            "metadata_test.csv: python -m dinov2_cell.profiles.write_submission PROFILES --metadata-test "
            "metadata_test.csv --out DIR",
        )
    ]
    logs.clear()
    sub.write_submission(prof, tmp_path / "j2.csv", submission_format="january")
    sub.write_submission(prof, tmp_path / "f.csv", metadata_test=_mt([["i", "PA", "A1"]]))
    assert logs == []


def test_january_table_options_and_errors():
    prof = _bare([("PB", "A02"), ("PA", "B01"), ("PA", "A03")]).assign(**{BROAD: ["BRD-2", "BRD-1", ""]})
    table = sub.submission_table(prof, ["b"])
    assert table.to_dict("list") == {
        BROAD: ["BRD-1", "BRD-2"],
        PLATE: ["PA", "PB"],
        WELL: ["B01", "A02"],
        "feature_0": [-1.0, -0.0],
    }
    with pytest.raises(ValueError) as e:
        sub.submission_table(prof.iloc[2:])
    assert str(e.value) == "submission: the profiles hold no compound well (only DMSO or an empty table)"
    with pytest.raises(ValueError) as e:
        sub.submission_table(prof.drop(columns=[BROAD]), submission_format="january")
    assert str(e.value) == (
        "submission: missing metadata column(s) ['Metadata_broad_sample']; present: ['Metadata_Plate', 'Metadata_Well']"
    )


# --- checking the final layout ---------------------------------------------------------------------------------------

META = _mt([["a", "PA", "A01"], ["b", "PA", "A02"], ["c", "PA", "A03"], ["d", "PB", "A01"], ["e", "PC", "A01"]])


def test_check_final_reports_every_problem_together(tmp_path):
    df = pd.DataFrame(
        {
            "ID": ["a", "", "a", "zz", "e"],
            "feature_1": [np.inf, 1.0, 2.0, 3.0, 4.0],
            "feature_2": [0.0, "x", 0.0, 0.0, 0.0],
        }
    )
    common = [
        "submission: 2 missing, infinite or non-numeric feature value(s), first feature_1 at ID a",
        "submission: 1 row(s) with an empty ID, first at line 3",
        "submission: 1 duplicated ID(s) (each ID exactly once): a",
    ]
    assert sub.check_submission(df) == common  # layout, values and IDs only without metadata_test.csv
    assert sub.check_submission(df, ["PA", "PB"], metadata_test=META) == common + [
        "submission: 1 ID(s) not in metadata_test.csv: zz",
        "submission: 1 row(s) of plate(s) outside the expected plates: PC",
        "submission: 3 ID(s) of metadata_test.csv missing; plates absent: PB; partial plates (missing/expected): "
        "PA (2/3)" + PARTIAL,
    ]
    meta = tmp_path / "meta.csv"
    META.to_csv(meta, index=False)
    path = tmp_path / "sub.csv"
    df.to_csv(path, index=False)
    assert sub.check_submission(path, metadata_test=meta) == [
        f"{path}: 2 missing, infinite or non-numeric feature value(s), first feature_1 at ID a",
        f"{path}: 1 row(s) with an empty ID, first at line 3",
        f"{path}: 1 duplicated ID(s) (each ID exactly once): a",
        f"{path}: 1 ID(s) not in {meta}: zz",
        f"{path}: 3 ID(s) of {meta} missing; plates absent: PB; partial plates (missing/expected): PA (2/3)" + PARTIAL,
    ]
    with pytest.raises(ValueError) as e:
        sub.check_submission(df, ["PA", "PZ", "PY"], metadata_test=META)
    assert str(e.value) == "--plates: ['PY', 'PZ'] are not plates of metadata_test.csv"


def test_check_final_many_plates_and_ids_listed_with_counts():
    partial = [[f"q{k}{s}", f"Q{k}", "A01" if s == "a" else "A02"] for k in range(9) for s in "ab"]
    absent = [[f"r{k}", f"R{k}", "A01"] for k in range(9)]
    meta = _mt(partial + absent)
    ids = [f"q{k}a" for k in range(9)] + [f"x{k}" for k in range(6)] + ["q0a"] * 6
    df = pd.DataFrame({"ID": ids, "feature_1": 0.0})
    assert sub.check_submission(df, metadata_test=meta) == [
        "submission: 6 duplicated ID(s) (each ID exactly once): q0a",
        "submission: 6 ID(s) not in metadata_test.csv: x0, x1, x2, x3, x4 (and 1 more)",
        "submission: 18 ID(s) of metadata_test.csv missing; plates absent: R0, R1, R2, R3, R4, R5, R6, R7 (and 1 "
        "more); partial plates (missing/expected): Q0 (1/2), Q1 (1/2), Q2 (1/2), Q3 (1/2), Q4 (1/2), Q5 (1/2), "
        "Q6 (1/2), Q7 (1/2) (and 1 more)" + PARTIAL,
    ]
    df = pd.DataFrame({"ID": [f"d{k}" for k in range(7)] + ["d5", "d6"] + ["d0"] * 4, "feature_1": 0.0})
    assert sub.check_submission(df) == ["submission: 6 duplicated ID(s) (each ID exactly once): d5, d6, d0"]
    df = pd.DataFrame({"ID": [f"d{k}" for k in range(5)] * 2, "feature_1": 0.0})
    assert sub.check_submission(df) == ["submission: 5 duplicated ID(s) (each ID exactly once): d0, d1, d2, d3, d4"]


def test_check_reads_ids_and_metadata_as_text(tmp_path):
    path = tmp_path / "sub.csv.gz"
    pd.DataFrame({"ID": ["007", "", "12"], "feature_1": [1.0, 2.0, 3.0]}).to_csv(path, index=False)
    read = sub.read_submission(path)  # number-like IDs stay text, leading zeros kept, also gzipped
    assert read["ID"].tolist() == ["007", "", "12"]
    meta = _mt([["007", "PA", "A01"], ["12", "PA", "A02"]])
    assert sub.check_submission(path, metadata_test=meta) == [f"{path}: 1 row(s) with an empty ID, first at line 3"]
    jan = tmp_path / "jan.csv"
    jan.write_text(f"{BROAD},{PLATE},{WELL},feature_0\nBRD-K,0042,A01,1.0\n")
    assert sub.read_submission(jan)[PLATE].tolist() == ["0042"]
    with pytest.raises(FileNotFoundError) as e:
        sub.read_submission(tmp_path / "no.csv")
    assert str(e.value) == f"no such submission file: {tmp_path / 'no.csv'}"
    table = pd.DataFrame({"ID": [" 7 ", None], "feature_1": [1.0, 2.0]})
    assert sub.read_submission(table)["ID"].tolist() == ["7", ""]


def test_check_layout_messages():
    final = pd.DataFrame({"ID": ["a"], "feature_1": [1.0], "feature_2": [2.0]})
    assert sub.check_submission(final, submission_format="january") == [
        "submission: the first column(s) must be ['Metadata_broad_sample', 'Metadata_Plate', 'Metadata_Well'], got "
        "['ID', 'feature_1', 'feature_2']"
    ]
    assert sub.check_submission(pd.DataFrame({"ID": ["a"]})) == ["submission: no feature column after ['ID']"]
    bad = pd.DataFrame(columns=["ID", "feature_1", "feature_3", "feature_2", "feature_4"])
    assert sub.check_submission(bad) == [
        "submission: column 3 is 'feature_3', expected feature_2 (features are feature_1 ... feature_4, in order); "
        "2 misnamed"
    ]
    jan = pd.DataFrame(columns=[BROAD, PLATE, WELL, "feature_1", "feature_0"])
    assert sub.check_submission(jan) == [
        "submission: column 4 is 'feature_1', expected feature_0 (features are feature_0 ... feature_1, in order); "
        "2 misnamed"
    ]
    tail = "the final layout starts ID, feature_1 and the January one Metadata_broad_sample, Metadata_Plate, "
    tail += "Metadata_Well, feature_0"
    assert sub.check_submission(pd.DataFrame(columns=list("vwxyz"))) == [
        f"submission: unknown layout (first columns ['v', 'w', 'x', 'y']); {tail}"
    ]
    assert sub.check_submission(pd.DataFrame()) == [f"submission: unknown layout (first columns []); {tail}"]
    with pytest.raises(ValueError) as e:
        sub.check_submission(final, submission_format="may")
    assert str(e.value) == "unknown submission format 'may'; choose from ['final', 'january']"


def test_check_file_source_is_its_path(tmp_path):
    path = tmp_path / "s.csv"
    pd.DataFrame({"ID": ["a"], "feature_2": [1.0]}).to_csv(path, index=False)
    assert sub.check_submission(path) == [
        f"{path}: column 2 is 'feature_2', expected feature_1 (features are feature_1 ... feature_1, in order); "
        "1 misnamed"
    ]


# --- checking the January layout -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plate_map():
    """Compound wells of plate P1 in the packaged map: plate, well, broad_sample; and one DMSO well of it."""
    meta = well_metadata([P1])
    comp = meta[meta[BROAD].astype(str).str.strip() != ""][[PLATE, WELL, BROAD]].reset_index(drop=True)
    dmso = meta.loc[meta[BROAD].astype(str).str.strip() == "", WELL].iloc[0]
    return comp, dmso


def _january(comp):
    return pd.DataFrame(
        {
            BROAD: comp[BROAD].to_numpy(),
            PLATE: comp[PLATE].to_numpy(),
            WELL: comp[WELL].to_numpy(),
            "feature_0": np.arange(len(comp), dtype=float),
            "feature_1": 1.0,
        }
    )


def test_check_january_reports_every_problem_together(tmp_path, plate_map):
    comp, dmso = plate_map
    assert len(comp) == 320
    good = _january(comp)
    assert sub.check_submission(good, [P1]) == []
    w0, w1 = comp[WELL].iloc[0], comp[WELL].iloc[1]
    broad1 = comp[BROAD].iloc[1]
    df = good.copy()
    df.loc[0, "feature_0"] = np.nan
    df.loc[1, BROAD] = "BRD-WRONG"
    df = df.drop(index=[2, 3])
    extra = pd.DataFrame(
        {
            BROAD: ["BRD-X", "", "", "BRD-Y"],
            PLATE: [P1, P1, P1, "OTHER"],
            WELL: [w0, dmso, dmso, "A01"],
            "feature_0": [5.0, 6.0, 7.0, 8.0],  # the duplicated wells differ in their features
            "feature_1": 0.0,
        }
    )
    df = pd.concat([df, extra], ignore_index=True)
    path = tmp_path / "jan.csv"
    df.to_csv(path, index=False)
    assert sub.check_submission(path, [P1, P2]) == [
        f"{path}: 1 missing, infinite or non-numeric feature value(s), first feature_0 at {P1} {w0}",
        f"{path}: 2 duplicated well(s) (each well exactly once): {P1} {w0}, {P1} {dmso}",
        f"{path}: 1 DMSO well(s), not compound-containing (leave them out): {P1} {dmso}",
        f"{path}: 1 row(s) of plate(s) outside the expected compound plates: OTHER",
        f"{path}: 1 well(s) whose {BROAD} differs from the packaged plate map, e.g. {P1} {w1}: 'BRD-WRONG' != "
        f"{broad1!r}",
        f"{path}: 322 compound well(s) missing; plates absent: {P2}; partial plates (missing/expected): "
        f"{P1} (2/320)" + PARTIAL,
    ]
    # a table is named "submission"; the first column tells the layout even when the features are misnamed
    assert sub.check_submission(df.iloc[:, :4].rename(columns={"feature_0": "f0"}), [P1])[0] == (
        "submission: column 4 is 'f0', expected feature_0 (features are feature_0 ... feature_0, in order); 1 misnamed"
    )
    assert sub.check_submission(df, [P1])[0] == (
        f"submission: 1 missing, infinite or non-numeric feature value(s), first feature_0 at {P1} {w0}"
    )
    jan = sub.check_submission(df, [P1])
    assert jan[-1] == "submission: 2 compound well(s) missing; partial plates (missing/expected): " + (
        f"{P1} (2/320)" + PARTIAL
    )


def test_check_january_numeric_looking_plate_and_unknown_plates(tmp_path):
    path = tmp_path / "jan.csv"
    path.write_text(f"{BROAD},{PLATE},{WELL},feature_0\nBRD-K,0042,A01,1.0\n")
    assert sub.check_submission(path, [P1]) == [
        f"{path}: 1 row(s) of plate(s) outside the expected compound plates: 0042",
        f"{path}: 320 compound well(s) missing; plates absent: {P1}" + PARTIAL,
    ]
    with pytest.raises(ValueError) as e:
        sub.check_submission(path, ["BR_NOPE", P1, "AA"])
    assert str(e.value) == "--plates: ['AA', 'BR_NOPE'] are not compound plates of 2020_11_04_CPJUMP1"


# --- submission_wells ------------------------------------------------------------------------------------------------


def test_submission_wells_maps_ids_back_to_wells():
    meta = _mt([["007", "PA", "a1"], ["b", "PB", "C3"], ["c", "PB", "C4"]])
    table = pd.DataFrame({"ID": [" b ", "007", "b"], "feature_1": [1.0, 2.0, 3.0], "feature_2": [4.0, 5.0, 6.0]})
    table.index = [5, 9, 2]
    out = sub.submission_wells(table, meta)
    expected = pd.DataFrame(
        {
            "Metadata_ID": ["b", "007", "b"],
            PLATE: ["PB", "PA", "PB"],
            WELL: ["C03", "A01", "C03"],
            "feature_1": [1.0, 2.0, 3.0],
            "feature_2": [4.0, 5.0, 6.0],
        }
    )
    pd.testing.assert_frame_equal(out, expected, check_dtype=False)
    assert list(out.index) == [0, 1, 2]


def test_submission_wells_names_unknown_ids():
    meta = _mt([["a", "PA", "A01"]])
    table = pd.DataFrame({"ID": ["a"] + [f"x{k}" for k in range(7)], "feature_1": 0.0})
    with pytest.raises(ValueError) as e:
        sub.submission_wells(table, meta, source="mine.csv")
    assert str(e.value) == "mine.csv: 7 ID(s) not in metadata_test.csv, e.g. x0, x1, x2, x3, x4 (and 2 more)"
    with pytest.raises(ValueError) as e:
        sub.submission_wells(table.iloc[:2], meta)
    assert str(e.value) == "submission: 1 ID(s) not in metadata_test.csv, e.g. x0"


# --- the two command lines, in-process -------------------------------------------------------------------------------


def test_cli_write_then_validate_in_process(tmp_path, capsys):
    prof = _bare([("PA", "A01"), ("PA", "A02")])
    prof_path, meta = tmp_path / "p.csv", tmp_path / "meta.csv"
    prof.to_csv(prof_path, index=False)
    _mt([["i", "PA", "A02"], ["j", "PA", "A1"]]).to_csv(meta, index=False)
    out = tmp_path / "out"
    assert write_cli.main([str(prof_path), "--metadata-test", str(meta), "--out", str(out)]) == 0
    written = out / "submission_final.csv"
    assert capsys.readouterr().out == f"wrote {written} (final layout; feature_1 = a ... feature_2 = b)\n"
    assert written.read_text() == "ID,feature_1,feature_2\ni,1.5,-1.0\nj,0.5,-0.0\n"
    assert validate_submission.main([str(written), "--metadata-test", str(meta)]) == 0
    assert capsys.readouterr().out == f"ok: {written} (final layout, 2 features, 2 IDs)\n"
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,feature_1,feature_2\ni,nan,1\ni,2,3\n")
    assert validate_submission.main([str(bad), "--metadata-test", str(meta)]) == 2
    prog = "python -m dinov2_cell.profiles.validate_submission: error: "
    assert capsys.readouterr().err.splitlines() == [
        f"{prog}{bad}: 1 missing, infinite or non-numeric feature value(s), first feature_1 at ID i",
        f"{prog}{bad}: 1 duplicated ID(s) (each ID exactly once): i",
        f"{prog}{bad}: 1 ID(s) of {meta} missing; partial plates (missing/expected): PA (1/2)" + PARTIAL,
    ]


def test_check_nullable_feature_columns():
    # pandas' nullable dtypes (e.g. read_csv(dtype_backend="numpy_nullable")): pd.NA counts as a missing value
    df = pd.DataFrame(
        {
            "ID": ["a", "b"],
            "feature_1": pd.array([pd.NA, 2], dtype="Int64"),
            "feature_2": pd.array([1.5, None], dtype="Float64"),
        }
    )
    assert sub.check_submission(df) == [
        "submission: 2 missing, infinite or non-numeric feature value(s), first feature_1 at ID a"
    ]
