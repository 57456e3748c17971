"""CPJUMP1 plate, well, compound and cell-line metadata, read from the real public files packaged with the plugin.

The files live in ``dinov2_cell/data/cpjump1/`` (provenance and checksums in ``SOURCE.md`` there) and are read as
package data, so nothing outside the installed package is needed at run time:

* ``experiment-metadata.tsv``: one row per plate of the CPJUMP1 batches (batch, plate map, perturbation type, cell
  type, time point, density, anomaly, ...).
* ``barcode_platemap.csv``: barcode -> plate-map name for batch ``2020_11_04_CPJUMP1``.
* ``JUMP-Target-1_compound_platemap.txt``: the 384-well compound layout (well -> ``broad_sample``; empty = DMSO).
* ``JUMP-Target-1_compound_metadata_targets.tsv``: compound annotations (``pert_iname``, ``target``, ``pert_type``,
  ``control_type``, ...). Its last row is DMSO with an empty ``broad_sample``.

Public API: :func:`well_metadata`, :func:`compound_plates`, :func:`plate_metadata`, plus the raw readers
``read_experiment_metadata``, ``read_barcode_platemap``, ``read_compound_platemap``, ``read_compound_metadata``.
Every function returns a fresh DataFrame (callers may modify it).
"""

from __future__ import annotations

import functools
from importlib import resources

import pandas as pd

from dinov2_cell.columns import CELL_LINES, PLATE, WELL

BATCH = "2020_11_04_CPJUMP1"
COMPOUND_PLATEMAP = "JUMP-Target-1_compound_platemap"

_FILES = {
    "experiment": "experiment-metadata.tsv",
    "barcodes": "barcode_platemap.csv",
    "platemap": "JUMP-Target-1_compound_platemap.txt",
    "compounds": "JUMP-Target-1_compound_metadata_targets.tsv",
}


def _read_packaged(name: str, sep: str) -> pd.DataFrame:
    # keep_default_na=False: empty broad_sample / target are meaningful (DMSO) and must stay "" not NaN.
    path = resources.files("dinov2_cell.data").joinpath("cpjump1", name)
    try:
        with path.open("r", encoding="utf-8", newline="") as f:
            return pd.read_csv(f, sep=sep, dtype=str, keep_default_na=False)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"packaged metadata file missing: dinov2_cell/data/cpjump1/{name} ({e})") from e


@functools.lru_cache(maxsize=None)
def _cached(key: str) -> pd.DataFrame:
    name = _FILES[key]
    return _read_packaged(name, "," if name.endswith(".csv") else "\t")


def read_experiment_metadata() -> pd.DataFrame:
    """Return ``experiment-metadata.tsv`` (all CPJUMP1 batches), every column as a string.

    Returns:
        DataFrame with columns Batch, Plate_Map_Name, Assay_Plate_Barcode, Perturbation, Cell_type, Time, Density,
        Antibiotics, Cell_line, Time_delay, Times_imaged, Anomaly, Number_of_images.
    """
    return _cached("experiment").copy()


def read_barcode_platemap() -> pd.DataFrame:
    """Return ``barcode_platemap.csv`` (batch 2020_11_04_CPJUMP1): Assay_Plate_Barcode, Plate_Map_Name.

    Returns:
        DataFrame of strings.
    """
    return _cached("barcodes").copy()


def read_compound_platemap() -> pd.DataFrame:
    """Return the compound plate map: well_position (A01..P24), broad_sample ("" for DMSO wells), solvent.

    Returns:
        DataFrame of strings, 384 rows.
    """
    return _cached("platemap").copy()


def read_compound_metadata() -> pd.DataFrame:
    """Return the compound annotations (``..._compound_metadata_targets.tsv``), DMSO row included.

    Returns:
        DataFrame of strings with columns broad_sample, InChIKey, pert_iname, pubchem_cid, target, target_list,
        pert_type, control_type, smiles.
    """
    return _cached("compounds").copy()


def plate_metadata(plates: list[str] | None = None, *, batch: str | None = BATCH) -> pd.DataFrame:
    """Plate-level metadata: one row per plate.

    Args:
        plates: barcodes to return (in this order); ``None`` = every plate of ``batch``.
        batch: restrict to this batch (default 2020_11_04_CPJUMP1); ``None`` = all batches in the experiment table.

    Returns:
        DataFrame with Metadata_Plate, Metadata_Plate_Map_Name, Metadata_Perturbation, Metadata_cell_line,
        Metadata_Time, Metadata_Density, Metadata_Anomaly, Metadata_Batch.

    Raises:
        ValueError: naming any barcode that is not in the experiment table (for ``batch``).
    """
    exp = read_experiment_metadata()
    if batch is not None:
        exp = exp[exp["Batch"] == batch]
    table = pd.DataFrame(
        {
            PLATE: exp["Assay_Plate_Barcode"],
            "Metadata_Plate_Map_Name": exp["Plate_Map_Name"],
            "Metadata_Perturbation": exp["Perturbation"],
            "Metadata_cell_line": exp["Cell_type"],
            "Metadata_Time": exp["Time"],
            "Metadata_Density": exp["Density"],
            "Metadata_Anomaly": exp["Anomaly"],
            "Metadata_Batch": exp["Batch"],
        }
    ).drop_duplicates(PLATE)
    # barcode_platemap.csv is the authoritative barcode -> plate map for the batch; it agrees with the
    # experiment table (checked in the tests), so it only fills plates the experiment table might lack.
    if batch in (None, BATCH):
        bp = read_barcode_platemap().rename(
            columns={"Assay_Plate_Barcode": PLATE, "Plate_Map_Name": "Metadata_Plate_Map_Name"}
        )
        missing = bp[~bp[PLATE].isin(table[PLATE])]
        if len(missing):
            table = pd.concat([table, missing.assign(Metadata_Batch=BATCH)], ignore_index=True).fillna("")
    table = table.sort_values(PLATE).reset_index(drop=True)
    if plates is None:
        return table
    plates = [plates] if isinstance(plates, str) else list(plates)
    unknown = [p for p in plates if p not in set(table[PLATE])]
    if unknown:
        raise ValueError(
            f"unknown plate barcode(s) {unknown} (not in experiment-metadata.tsv"
            f"{'' if batch is None else ' for batch ' + batch})"
        )
    return table.set_index(PLATE).loc[plates].reset_index()


def compound_plates(cell_line: str | None = None) -> list[str]:
    """Barcodes of the compound plates of batch 2020_11_04_CPJUMP1 (24 plates: 8 U2OS, 16 A549), sorted.

    Args:
        cell_line: ``"U2OS"`` or ``"A549"`` (case-insensitive) to keep one cell line; ``None`` = both.

    Returns:
        Sorted list of barcodes.

    Raises:
        ValueError: unknown cell line.
    """
    table = plate_metadata()
    table = table[table["Metadata_Perturbation"] == "compound"]
    if cell_line is not None:
        wanted = _canonical_cell_line(cell_line)
        table = table[table["Metadata_cell_line"] == wanted]
    return sorted(table[PLATE])


def plate_cell_lines(plates: list[str] | None = None) -> dict[str, str]:
    """Map barcode -> cell line (U2OS / A549) for plates of batch 2020_11_04_CPJUMP1.

    Args:
        plates: barcodes; ``None`` = all plates of the batch.

    Returns:
        Dict barcode -> cell line.
    """
    table = plate_metadata(plates)
    return dict(zip(table[PLATE], table["Metadata_cell_line"]))


def compound_table() -> pd.DataFrame:
    """Compound annotations with ``Metadata_`` column names, one row per broad_sample (DMSO: broad_sample "").

    Returns:
        DataFrame with Metadata_broad_sample, Metadata_pert_iname, Metadata_target, Metadata_target_list,
        Metadata_pert_type, Metadata_control_type, Metadata_InChIKey, Metadata_smiles.
    """
    cm = read_compound_metadata()
    return pd.DataFrame(
        {
            "Metadata_broad_sample": cm["broad_sample"],
            "Metadata_pert_iname": cm["pert_iname"],
            "Metadata_target": cm["target"],
            "Metadata_target_list": cm["target_list"],
            "Metadata_pert_type": cm["pert_type"],
            "Metadata_control_type": cm["control_type"],
            "Metadata_InChIKey": cm["InChIKey"],
            "Metadata_smiles": cm["smiles"],
        }
    )


def compound_layout() -> pd.DataFrame:
    """The compound plate map joined with the compound annotations: one row per well (384).

    Returns:
        DataFrame with Metadata_Well plus the :func:`compound_table` columns and Metadata_solvent.
        DMSO wells have Metadata_broad_sample "" and Metadata_pert_iname "DMSO".

    Raises:
        ValueError: if a plate-map compound has no annotation (the packaged files are inconsistent).
    """
    pm = read_compound_platemap().rename(
        columns={
            "well_position": WELL,
            "broad_sample": "Metadata_broad_sample",
            "solvent": "Metadata_solvent",
        }
    )
    compounds = compound_table()
    merged = pm.merge(compounds, on="Metadata_broad_sample", how="left", validate="many_to_one")
    bad = merged[merged["Metadata_pert_iname"].isna()]
    if len(bad):
        raise ValueError(
            f"JUMP-Target-1_compound_platemap.txt: broad_sample {bad['Metadata_broad_sample'].iloc[0]!r} "
            "has no row in JUMP-Target-1_compound_metadata_targets.tsv"
        )
    return merged


def well_metadata(plates: list[str] | None = None) -> pd.DataFrame:
    """Per-(plate, well) metadata for compound plates of batch 2020_11_04_CPJUMP1.

    The plate map comes from barcode_platemap.csv, the cell line from experiment-metadata.tsv (``Cell_type``), the
    compound of each well from the compound plate map and its annotation from the compound metadata.

    Args:
        plates: barcodes (must be compound plates of the batch); ``None`` = the 24 compound plates.

    Returns:
        DataFrame sorted by plate then well, one row per well (384 per plate), with columns Metadata_Plate,
        Metadata_Well, Metadata_Plate_Map_Name, Metadata_cell_line, Metadata_broad_sample ("" for DMSO),
        Metadata_pert_iname ("DMSO" for DMSO), Metadata_target ("" for DMSO), Metadata_target_list,
        Metadata_pert_type ("trt" or "control"; DMSO and the positive controls are "control"),
        Metadata_control_type ("", "negcon" for DMSO, "poscon_*"), Metadata_solvent, Metadata_InChIKey,
        Metadata_smiles, Metadata_Time, Metadata_Density, Metadata_Anomaly.

    Raises:
        ValueError: a barcode not in the batch, or one whose plate map is not the (packaged) compound plate map.
    """
    plates = compound_plates() if plates is None else ([plates] if isinstance(plates, str) else list(plates))
    pmeta = plate_metadata(plates)
    wrong = pmeta[pmeta["Metadata_Plate_Map_Name"] != COMPOUND_PLATEMAP]
    if len(wrong):
        row = wrong.iloc[0]
        raise ValueError(
            f"plate {row['Metadata_Plate']} uses plate map {row['Metadata_Plate_Map_Name']!r}; only "
            f"{COMPOUND_PLATEMAP!r} is packaged, so well metadata exists for compound plates only"
        )
    layout = compound_layout()
    cols = [PLATE, "Metadata_Plate_Map_Name", "Metadata_cell_line", "Metadata_Time", "Metadata_Density"]
    out = pmeta[cols + ["Metadata_Anomaly"]].merge(layout, how="cross")
    order = [
        PLATE,
        WELL,
        "Metadata_Plate_Map_Name",
        "Metadata_cell_line",
        "Metadata_broad_sample",
        "Metadata_pert_iname",
        "Metadata_target",
        "Metadata_target_list",
        "Metadata_pert_type",
        "Metadata_control_type",
        "Metadata_solvent",
        "Metadata_InChIKey",
        "Metadata_smiles",
        "Metadata_Time",
        "Metadata_Density",
        "Metadata_Anomaly",
    ]
    return out[order].sort_values([PLATE, WELL]).reset_index(drop=True)


def _canonical_cell_line(cell_line: str) -> str:
    for known in CELL_LINES:
        if cell_line.strip().upper() == known.upper():
            return known
    raise ValueError(f"unknown cell line {cell_line!r}; CPJUMP1 has {', '.join(CELL_LINES)}")
