"""Writing synthetic plates to disk in the Cell Painting Gallery layout (batch ``2020_11_04_CPJUMP1``).

Written layout::

    OUT/images/2020_11_04_CPJUMP1/images/<BARCODE>__<timestamp>-Measurement1/Images/rRRcCCfFFp01-chNsk1fk1fl1.tiff
    OUT/load_data_csv/2020_11_04_CPJUMP1/<BARCODE>/load_data.csv              (+ load_data_with_illum.csv with illum)
    OUT/illum/2020_11_04_CPJUMP1/<BARCODE>/<BARCODE>_Illum<Channel>.npy       (with illum)
    OUT/synthetic_truth.csv     per well: plate, well, cell line, compound, target, the compound's potency, sites
    OUT/synthetic_sites.csv     per site: Metadata_Plate, Metadata_Well, Metadata_Site, n_cells = the true number of
                                cells whose centre lies inside the image (what a nuclei segmentation should count)
    OUT/synthetic_manifest.json the parameters, so a run can be identified

TIFFs are uint16, 8 channels with the Phenix channel numbers of :data:`dinov2_cell.data.names.PHENIX_CHANNELS`.
``PathName_*`` columns of the CSVs are relative to OUT (the reader resolves them), so the output is byte-identical for a
given set of options wherever it is written. Every file is written atomically (temporary file, then rename).

Wells subset (``wells=N``): about 1/6 DMSO wells (as on the real plate) and compounds taken two by two from targets
that have two compounds on the plate, so target consistency can be measured; the same wells on every plate.
Determinism: every site draws from its own generator seeded with (seed, plate, well, site), so the output does not
depend on the number of worker processes.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import tifffile
from tqdm import tqdm

from dinov2_cell.columns import PLATE, SITE, WELL
from dinov2_cell.atomic import atomic_path, write_text
from dinov2_cell.data import metadata as md
from dinov2_cell.data.names import ALL_CHANNELS, PHENIX_CHANNELS, parse_well, phenix_filename
from dinov2_cell.synthetic.biology import (
    DEFAULT_PHENOTYPE,
    DEFAULT_WELLS,
    N_EFFECTS,
    REAL_SIXTEEN_SITE_PLATES,
    PhenotypeSettings,
    compound_effect,
    default_plates,
    select_wells,
    stable_key,
)
from dinov2_cell.synthetic.rendering import SyntheticPlate, plate_nuisance, render_site, to_counts

BATCH = md.BATCH
CHANNEL_NUMBER = {name: num for num, name in PHENIX_CHANNELS.items()}


@dataclass
class SyntheticPlates:
    """What :func:`generate_plates` wrote.

    Attributes:
        out_dir: the output root (pass it as the dataset ``root``).
        plates: barcodes, in generation order.
        cell_lines: barcode -> cell line.
        wells: well names (the same on every plate).
        sites: barcode -> sites per well (before missing sites).
        load_data: barcode -> LoadData CSV path (``load_data_with_illum.csv`` when illum was written).
        image_dirs: barcode -> Phenix ``Images`` folder.
        n_sites: sites written per plate (after missing sites).
        n_images: TIFF files written.
        illum: whether illumination functions were written.
    """

    out_dir: str
    plates: list
    cell_lines: dict
    wells: list
    sites: dict
    load_data: dict
    image_dirs: dict
    n_sites: dict
    n_images: int
    illum: bool


def _parse_plates(plates) -> list[str]:
    if plates is None:
        return default_plates(4)
    if isinstance(plates, (int, np.integer)):
        return default_plates(int(plates))
    if isinstance(plates, str):
        if plates.strip().isdigit():
            return default_plates(int(plates))
        plates = [p.strip() for p in plates.split(",") if p.strip()]
    plates = list(dict.fromkeys(plates))
    known = set(md.compound_plates())
    bad = [p for p in plates if p not in known]
    if bad:
        raise ValueError(f"not compound plates of {BATCH}: {bad}; choose among {', '.join(sorted(known))}")
    return plates


def _site_tasks(plate: SyntheticPlate, wells: list[str], layout: pd.DataFrame, missing: float, seed: int):
    tasks = []
    for well in wells:
        sites = list(range(1, plate.n_sites + 1))
        mrng = np.random.default_rng([seed, stable_key("missing", plate.barcode, well)])
        if missing > 0 and mrng.random() < missing:
            k = int(mrng.integers(1, 3))
            drop = set(mrng.choice(sites, size=min(k, len(sites) - 1), replace=False).tolist())
            sites = [s for s in sites if s not in drop]
        tasks.append((well, sites))
    return tasks


def _render_well(args) -> list[tuple[str, int, int]]:
    # (well, site, true cell count) of every site written
    (plate, well, sites, size, seed, compound, out_dir, phenotype) = args
    row, col = parse_well(well)
    edge = row in (1, 16) or col in (1, 24)
    effect, _ = compound_effect(*compound, plate.cell_line, seed, phenotype)
    well_rng = np.random.default_rng([seed, stable_key("well", plate.barcode, well)])
    effect = effect + phenotype.well_noise * well_rng.standard_normal(N_EFFECTS)
    folder = Path(out_dir) / plate.folder
    written = []
    for site in sites:
        rng = np.random.default_rng([seed, stable_key("site", plate.barcode, well, site)])
        truth: dict = {}
        signal = render_site(size, plate.cell_line, effect, rng, edge, truth=truth)
        for ch, img in to_counts(signal, plate, rng).items():
            name = phenix_filename(row, col, site, CHANNEL_NUMBER[ch])
            _write_tiff(folder / name, img)
        written.append((well, site, int(truth["n_cells"])))
    return written


def _write_tiff(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, image, photometric="minisblack", metadata=None)


def generate_plates(
    out_dir: str | os.PathLike,
    *,
    plates: int | str | Sequence[str] | None = 4,
    wells: int | str | Sequence[str] | None = DEFAULT_WELLS,
    sites: int = 9,
    sixteen_site_plates: str | Sequence[str] | None = "real",
    missing_sites: float = 0.0,
    size: int = 96,
    seed: int = 0,
    phenotype: PhenotypeSettings = DEFAULT_PHENOTYPE,
    illum: bool = False,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> SyntheticPlates:
    """Write synthetic plates (images, LoadData CSVs, optional illumination functions) under ``out_dir``.

    Args:
        out_dir: output root.
        plates: a count N (:func:`default_plates`: alternating U2OS/A549 compound plates), a comma-separated string or
            list of compound-plate barcodes. Default 4.
        wells: a count, ``"all"``, or well names (:func:`select_wells`). Default 48.
        sites: sites per well (default 9).
        sixteen_site_plates: plates that get 16 sites per well: ``"real"`` (the real 16-site plates BR00117015/16/17/19
            when chosen), ``"none"``/``None``, or barcodes.
        missing_sites: fraction of wells that lose 1 or 2 sites (files and CSV rows absent, as in CPJUMP1).
        size: image side in pixels (field of view fixed; default 96).
        seed: seed; the output is byte-identical for the same options.
        phenotype: compound-phenotype parameters (default: the calibrated ones, see
            :class:`~dinov2_cell.synthetic.biology.PhenotypeSettings`).
        illum: also write illumination functions and ``load_data_with_illum.csv``.
        workers: processes used for rendering (the output does not depend on it).
        overwrite: replace plates already present in ``out_dir`` (otherwise that is an error).
        progress: show a tqdm bar.

    Returns:
        A :class:`SyntheticPlates` describing what was written.

    Raises:
        ValueError: bad option (unknown barcode or well, sizes out of range).
        FileExistsError: a plate already exists in ``out_dir`` and ``overwrite`` is False.
    """
    out = Path(out_dir).resolve()
    barcodes = _parse_plates(plates)
    well_names = select_wells(wells)
    if not 1 <= int(sites) <= 99:
        raise ValueError(f"sites must be in 1..99, got {sites}")
    if not 16 <= int(size) <= 4096:
        raise ValueError(f"size must be in 16..4096 pixels, got {size}")
    if not 0.0 <= float(missing_sites) <= 1.0:
        raise ValueError(f"missing_sites is a fraction of wells in [0, 1], got {missing_sites}")
    if sixteen_site_plates is None or (isinstance(sixteen_site_plates, str) and sixteen_site_plates.lower() == "none"):
        sixteen = set()
    elif isinstance(sixteen_site_plates, str) and sixteen_site_plates.lower() == "real":
        sixteen = set(REAL_SIXTEEN_SITE_PLATES)
    else:
        sixteen = set([sixteen_site_plates] if isinstance(sixteen_site_plates, str) else sixteen_site_plates)
        sixteen = {p.strip() for s in sixteen for p in s.split(",") if p.strip()}
        stray = sorted(sixteen - set(barcodes))
        if stray:
            raise ValueError(f"--sixteen-site-plates {stray} are not among the generated plates {barcodes}")
    layout = md.compound_layout().set_index(WELL)
    line_of = md.plate_cell_lines(barcodes)
    all_compound = md.compound_plates()

    plate_objs = []
    for barcode in barcodes:
        idx = all_compound.index(barcode)
        folder = (
            f"images/{BATCH}/images/{barcode}__2020-11-{5 + idx // 12:02d}T{10 + idx % 12:02d}_{(7 * idx) % 60:02d}_00"
            f"-Measurement1/Images"
        )
        p = SyntheticPlate(barcode, line_of[barcode], 16 if barcode in sixteen else int(sites), idx, folder)
        p.illum_fields, p.gains = plate_nuisance(barcode, int(size), seed)
        img_dir = out / folder
        csv_dir = out / "load_data_csv" / BATCH / barcode
        if (img_dir.exists() or csv_dir.exists()) and not overwrite:
            raise FileExistsError(
                f"plate {barcode} already exists under {out} ({img_dir}); pass overwrite=True / --overwrite"
            )
        if img_dir.exists():
            for f in img_dir.iterdir():
                f.unlink()
        img_dir.mkdir(parents=True, exist_ok=True)
        plate_objs.append(p)

    jobs = []
    for p in plate_objs:
        for well, site_list in _site_tasks(p, well_names, layout, float(missing_sites), seed):
            row = layout.loc[well]
            compound = (row["Metadata_broad_sample"], row["Metadata_target"], row["Metadata_pert_type"])
            jobs.append((p, well, site_list, int(size), int(seed), compound, str(out), phenotype))
    n_sites_total = sum(len(j[2]) for j in jobs)
    bar = tqdm(total=n_sites_total, desc="synthetic sites", unit="site", disable=not progress)
    written: dict[str, list[tuple[str, int, int]]] = {p.barcode: [] for p in plate_objs}
    if workers and workers > 1:
        with ProcessPoolExecutor(max_workers=int(workers)) as pool:
            for job, done in zip(jobs, pool.map(_render_well, jobs, chunksize=4)):
                written[job[0].barcode].extend(done)
                bar.update(len(done))
    else:
        for job in jobs:
            done = _render_well(job)
            written[job[0].barcode].extend(done)
            bar.update(len(done))
    bar.close()

    load_data, image_dirs, truth_rows = {}, {}, []
    for p in plate_objs:
        image_dirs[p.barcode] = str(out / p.folder)
        csv_dir = out / "load_data_csv" / BATCH / p.barcode
        rows = sorted((w, s) for w, s, _ in written[p.barcode])
        table = _load_data_table(p, rows)
        write_text(csv_dir / "load_data.csv", table.to_csv(index=False, lineterminator="\n"))
        load_data[p.barcode] = str(csv_dir / "load_data.csv")
        if illum:
            illum_rel = f"illum/{BATCH}/{p.barcode}"
            (out / illum_rel).mkdir(parents=True, exist_ok=True)
            for ch in ALL_CHANNELS:
                fld = p.illum_fields[ch]
                # CellProfiler-style: the smooth field divided by its robust minimum (so the function is >= ~1).
                func = (fld / np.percentile(fld, 2)).astype(np.float32)
                _write_npy(out / illum_rel / f"{p.barcode}_Illum{ch}.npy", func)
                table[f"FileName_Illum{ch}"] = f"{p.barcode}_Illum{ch}.npy"
                table[f"PathName_Illum{ch}"] = illum_rel
            write_text(csv_dir / "load_data_with_illum.csv", table.to_csv(index=False, lineterminator="\n"))
            load_data[p.barcode] = str(csv_dir / "load_data_with_illum.csv")
        for well in well_names:
            row = layout.loc[well]
            _, potency = compound_effect(
                row["Metadata_broad_sample"],
                row["Metadata_target"],
                row["Metadata_pert_type"],
                p.cell_line,
                seed,
                phenotype,
            )
            truth_rows.append(
                dict(
                    Metadata_Plate=p.barcode,
                    Metadata_Well=well,
                    Metadata_cell_line=p.cell_line,
                    Metadata_broad_sample=row["Metadata_broad_sample"],
                    Metadata_pert_iname=row["Metadata_pert_iname"],
                    Metadata_target=row["Metadata_target"],
                    Metadata_pert_type=row["Metadata_pert_type"],
                    potency=round(potency, 6),
                    n_sites=sum(1 for w, _, _ in written[p.barcode] if w == well),
                )
            )
    truth = pd.DataFrame(truth_rows)
    write_text(out / "synthetic_truth.csv", truth.to_csv(index=False, lineterminator="\n"))
    site_truth = pd.DataFrame(
        [(b, w, s, n) for b, rows in written.items() for w, s, n in rows],
        columns=[PLATE, WELL, SITE, "n_cells"],
    ).sort_values([PLATE, WELL, SITE])
    write_text(out / "synthetic_sites.csv", site_truth.to_csv(index=False, lineterminator="\n"))
    result = SyntheticPlates(
        out_dir=str(out),
        plates=barcodes,
        cell_lines={p.barcode: p.cell_line for p in plate_objs},
        wells=well_names,
        sites={p.barcode: p.n_sites for p in plate_objs},
        load_data=load_data,
        image_dirs=image_dirs,
        n_sites={b: len(v) for b, v in written.items()},
        n_images=n_sites_total * len(ALL_CHANNELS),
        illum=bool(illum),
    )
    manifest = dict(
        generator="dinov2_cell.synthetic",
        options=dict(
            plates=barcodes,
            wells=well_names,
            sites=int(sites),
            sixteen_site_plates=sorted(sixteen & set(barcodes)),
            missing_sites=float(missing_sites),
            size=int(size),
            seed=int(seed),
            illum=bool(illum),
        ),
        phenotype=phenotype.describe(),
        cell_lines=result.cell_lines,
        n_sites=result.n_sites,
    )
    write_text(out / "synthetic_manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return result


def _write_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)


def _load_data_table(plate: SyntheticPlate, rows: list[tuple[str, int]]) -> pd.DataFrame:
    data = {
        PLATE: [plate.barcode] * len(rows),
        WELL: [w for w, _ in rows],
        SITE: [s for _, s in rows],
    }
    rc = [parse_well(w) for w, _ in rows]
    data["Metadata_Row"] = [r for r, _ in rc]
    data["Metadata_Col"] = [c for _, c in rc]
    for ch in ALL_CHANNELS:
        data[f"FileName_Orig{ch}"] = [phenix_filename(r, c, s, CHANNEL_NUMBER[ch]) for (r, c), (_, s) in zip(rc, rows)]
    for ch in ALL_CHANNELS:
        data[f"PathName_Orig{ch}"] = [plate.folder] * len(rows)
    return pd.DataFrame(data)
