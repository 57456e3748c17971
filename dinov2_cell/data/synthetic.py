"""Synthetic CPJUMP1-like plates in the Cell Painting Gallery layout, for tests and the CPU demo.

Usage::

    python -m dinov2_cell.data.synthetic --out /tmp/synth                 # 4 plates (2 U2OS, 2 A549), 48 wells, 9 sites, 96 px
    python -m dinov2_cell.data.synthetic --out /tmp/s --plates BR00116991,BR00116995 --wells all --size 128 --illum

Written layout (same as the gallery, batch ``2020_11_04_CPJUMP1``)::

    OUT/images/2020_11_04_CPJUMP1/images/<BARCODE>__<timestamp>-Measurement1/Images/rRRcCCfFFp01-chNsk1fk1fl1.tiff
    OUT/load_data_csv/2020_11_04_CPJUMP1/<BARCODE>/load_data.csv              (+ load_data_with_illum.csv with --illum)
    OUT/illum/2020_11_04_CPJUMP1/<BARCODE>/<BARCODE>_Illum<Channel>.npy       (with --illum)
    OUT/synthetic_truth.csv     per well: plate, well, cell line, compound, target, the compound's potency
    OUT/synthetic_manifest.json the parameters, so a run can be identified

TIFFs are uint16, 8 channels with the Phenix channel numbers of :data:`dinov2_cell.data.index.PHENIX_CHANNELS`.
``PathName_*`` columns of the CSVs are relative to OUT (the reader resolves them), so the output is byte-identical for a
given set of options wherever it is written.

Plates, wells, compounds and targets are the real ones: barcodes and cell lines from ``experiment-metadata.tsv``, the
well -> compound map from ``JUMP-Target-1_compound_platemap.txt`` (the same map on every plate, as in CPJUMP1), and the
compound -> target table. The biology is invented but structured so that evaluation means something:

* every compound has a reproducible phenotype: a 20-d effect vector (cell count / toxicity, nuclear size and shape,
  cell size and irregularity, DNA texture, ER and mitochondria perinuclear concentration and texture, nucleoli,
  RNA distribution, membrane vs Golgi actin stain, Golgi size, fraction of rounded/condensed cells, per-channel
  intensity) = potency x (0.6 x its target's direction + 0.4 x its own + 0.3 x a cell-line-specific one). Compounds
  sharing a target thus look alike; about 30 % of compounds are (nearly) inactive, like many real ones, and positive
  controls are strong. DMSO has no effect.
* each cell line has its own baseline morphology (U2OS: fewer, larger, flatter, irregular cells; A549: denser,
  smaller, rounder cells, brighter nuclei) and its own sensitivity to each compound.
* nuisance: per plate a per-channel intensity gain and an illumination field (vignetting + a linear gradient; the
  illumination functions written with ``--illum`` are these fields); per well a small random effect and a mild edge
  effect; per site a cell density factor, random cell positions and a small exposure change; per pixel shot noise
  (Gaussian approximation of the Poisson), read noise and a camera offset.
* brightfield planes (Brightfield in focus, HighZBF / LowZBF above / below focus) are low-contrast: a bright
  background with slightly darker cells, and opposite halos at cell edges in the two defocused planes.

Wells subset (``--wells N``): about 1/6 DMSO wells (as on the real plate) and compounds taken two by two from targets
that have two compounds on the plate, so target consistency can be measured; the same wells on every plate.
Determinism: every site draws from its own generator seeded with (seed, plate, well, site), so the output does not
depend on ``--workers``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage
from tqdm import tqdm

from dinov2_cell.data import metadata as md
from dinov2_cell.data.names import ALL_CHANNELS, FLUO_CHANNELS, PHENIX_CHANNELS, parse_well, phenix_filename

logger = logging.getLogger("dinov2_cell.data")

BATCH = md.BATCH
CHANNEL_NUMBER = {name: num for num, name in PHENIX_CHANNELS.items()}
REAL_SIXTEEN_SITE_PLATES = ("BR00117015", "BR00117016", "BR00117017", "BR00117019")
N_EFFECTS = 20
DEFAULT_WELLS = 48

# Cell-line baselines. Lengths are fractions of the image side: --size changes resolution, not the field of view.
CELL_LINES = {
    "U2OS": dict(
        density=8.0,
        nuc_r=0.050,
        aspect=1.30,
        cell_scale=2.5,
        irregular=0.28,
        dna=1.0,
        er=0.85,
        rna=0.7,
        agp=0.8,
        mito=1.0,
        er_conc=1.6,
        mito_conc=1.2,
        dna_tex=0.30,
        golgi=0.55,
    ),
    "A549": dict(
        density=13.0,
        nuc_r=0.042,
        aspect=1.12,
        cell_scale=2.0,
        irregular=0.14,
        dna=1.35,
        er=1.0,
        rna=0.8,
        agp=0.65,
        mito=0.8,
        er_conc=2.2,
        mito_conc=1.8,
        dna_tex=0.22,
        golgi=0.45,
    ),
}
# Fluorescent signal scale (camera counts at intensity 1) and brightfield background level.
LEVELS = {"DNA": 9000.0, "ER": 4000.0, "RNA": 3500.0, "AGP": 3500.0, "Mito": 4500.0}
BF_LEVEL = 5000.0
CAMERA_OFFSET = 100.0
AUTOFLUORESCENCE = 120.0
READ_NOISE = 4.0
PHOTON_GAIN = 2.0  # counts per detected photon: shot-noise std = sqrt(PHOTON_GAIN * signal)


# ----------------------------------------------------------------------------------------------------------------
# Choices of plates and wells


def default_plates(n: int) -> list[str]:
    """``n`` compound plates with 9 sites per well, alternating U2OS and A549 (sorted barcodes within a line).

    Args:
        n: number of plates (1..20).

    Returns:
        Barcodes.
    """
    lines = {cl: [p for p in md.compound_plates(cl) if p not in REAL_SIXTEEN_SITE_PLATES] for cl in md.CELL_LINES}
    order = []
    for i in range(max(len(v) for v in lines.values())):
        for cl in md.CELL_LINES:
            if i < len(lines[cl]):
                order.append(lines[cl][i])
    if not 1 <= n <= len(order):
        raise ValueError(f"--plates N must be in 1..{len(order)} (compound plates with 9 sites), got {n}")
    return order[:n]


def select_wells(wells: int | str | Sequence[str] | None = DEFAULT_WELLS) -> list[str]:
    """Wells to generate: ``"all"`` (384), a list of well names, or a count N.

    For a count: round(N/6) DMSO wells (at least 1), then compounds in pairs sharing a target (targets in sorted
    order, spread over the target list), then single compounds if needed.

    Args:
        wells: see above.

    Returns:
        Sorted well names.
    """
    layout = md.compound_layout()
    if wells is None:
        wells = DEFAULT_WELLS
    if isinstance(wells, str) and wells.strip().lower() == "all":
        return sorted(layout["Metadata_Well"])
    if isinstance(wells, str) and not wells.strip().isdigit():
        wells = [w for w in wells.split(",") if w.strip()]
    if not isinstance(wells, (int, np.integer)) and not (isinstance(wells, str) and wells.strip().isdigit()):
        from dinov2_cell.data.names import normalize_well

        names = sorted({normalize_well(w) for w in wells})
        unknown = [w for w in names if w not in set(layout["Metadata_Well"])]
        if unknown:
            raise ValueError(f"unknown wells {unknown} (a 384-well plate has A01..P24)")
        return names
    n = int(wells)
    if not 1 <= n <= 384:
        raise ValueError(f"--wells must be 'all', a list, or 1..384, got {n}")
    if n == 384:
        return sorted(layout["Metadata_Well"])
    dmso = layout[layout["Metadata_broad_sample"] == ""]["Metadata_Well"].tolist()
    n_dmso = max(1, int(round(n / 6))) if n > 1 else 0
    chosen = _spread(sorted(dmso), n_dmso)
    treated = layout[layout["Metadata_broad_sample"] != ""].drop_duplicates("Metadata_broad_sample")
    by_target = treated.groupby("Metadata_target")["Metadata_Well"].apply(sorted)
    pairs = [w for w in by_target.index if len(by_target[w]) == 2]
    need = n - len(chosen)
    for target in _spread(sorted(pairs), need // 2):
        chosen.extend(by_target[target])
    rest = [w for w in sorted(treated["Metadata_Well"]) if w not in chosen]
    chosen.extend(_spread(rest, n - len(chosen)))
    return sorted(chosen)


def _spread(items: list, k: int) -> list:
    # k items evenly spaced through the list (deterministic, covers the whole range).
    if k <= 0:
        return []
    if k >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[i] for i in idx]


# ----------------------------------------------------------------------------------------------------------------
# Biology


def _key(*parts) -> int:
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode())


def _direction(seed: int, *parts) -> np.ndarray:
    return np.random.default_rng([seed, _key(*parts)]).standard_normal(N_EFFECTS)


def compound_effect(
    broad_sample: str, target: str, pert_type: str, cell_line: str, seed: int
) -> tuple[np.ndarray, float]:
    """The effect vector of a compound in a cell line, and its potency (0 for DMSO).

    Args:
        broad_sample: compound id ("" = DMSO).
        target: its annotated target.
        pert_type: "trt" or "control" (positive controls are strong).
        cell_line: U2OS or A549.
        seed: generator seed.

    Returns:
        (effect vector of length :data:`N_EFFECTS`, potency in this cell line).
    """
    if not broad_sample:
        return np.zeros(N_EFFECTS), 0.0
    rng = np.random.default_rng([seed, _key("potency", broad_sample)])
    if pert_type == "control":
        base = rng.uniform(0.9, 1.4)
    elif rng.random() < 0.3:
        base = rng.uniform(0.0, 0.12)
    else:
        base = rng.uniform(0.35, 1.2)
    sens = np.exp(0.25 * np.random.default_rng([seed, _key("sensitivity", broad_sample, cell_line)]).standard_normal())
    potency = float(base * sens)
    t = _direction(seed, "target", target or broad_sample)
    c = _direction(seed, "compound", broad_sample)
    ell = _direction(seed, "line", broad_sample, cell_line)
    return potency * (0.6 * t + 0.4 * c + 0.3 * ell), potency


@dataclass
class _Plate:
    barcode: str
    cell_line: str
    n_sites: int
    index: int
    folder: str
    illum_fields: dict = field(default_factory=dict)
    gains: dict = field(default_factory=dict)


def _plate_nuisance(barcode: str, size: int, seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng([seed, _key("plate", barcode)])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    fields, gains = {}, {}
    cy, cx = size / 2 + rng.normal(0, 0.08 * size, 2)
    angle = rng.uniform(0, 2 * np.pi)
    slope = rng.uniform(-0.12, 0.12)
    r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (0.5 * size) ** 2
    lin = ((xx - size / 2) * np.cos(angle) + (yy - size / 2) * np.sin(angle)) / size
    for ch in ALL_CHANNELS:
        vign = rng.uniform(0.12, 0.3)
        fields[ch] = np.clip((1.0 - 0.5 * vign * r2) * (1.0 + slope * lin), 0.3, None).astype(np.float32)
        gains[ch] = float(np.exp(rng.normal(0, 0.15)))
    return fields, gains


def _smooth_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), max(sigma_px, 0.3), mode="wrap")
    return f / (f.std() + 1e-8)


def render_site(
    size: int,
    cell_line: str,
    effect: np.ndarray,
    rng: np.random.Generator,
    edge_well: bool = False,
    truth: dict | None = None,
) -> dict[str, np.ndarray]:
    """Render the noise-free signal of one site (intensity units, before plate gain, illumination and noise).

    Args:
        size: image side in pixels.
        cell_line: U2OS or A549.
        effect: the effect vector (compound + well effect).
        rng: the site's generator.
        edge_well: apply the mild edge-well effect (fewer cells).
        truth: if given, receives ``n_cells`` (cells whose centre lies inside the image) and ``centres`` ((n, 2)
            array of every placed centre, row/col in pixels, some just outside the image).

    Returns:
        Channel name -> float32 H x W signal (fluorescent: >= 0; brightfield: relative transmission around 1).
    """
    b = CELL_LINES[cell_line]
    e = effect
    scale = size / 96.0
    density = b["density"] * np.exp(-0.3 * abs(e[0]) + 0.1 * e[0]) * np.exp(rng.normal(0, 0.2))
    density *= 0.88 if edge_well else 1.0
    n = int(np.clip(rng.poisson(density), 1, 60))
    nuc_r = b["nuc_r"] * size * np.exp(0.22 * e[1])
    aspect = max(1.0, b["aspect"] + 0.25 * e[2])
    cell_scale = b["cell_scale"] * np.exp(0.18 * e[3])
    irregular = float(np.clip(b["irregular"] + 0.12 * e[4], 0.0, 0.55))
    dna_tex = b["dna_tex"] * np.exp(0.5 * e[5])
    er_conc = b["er_conc"] * np.exp(0.45 * e[6])
    er_tex = 0.35 * np.exp(0.5 * e[7])
    nucleoli = 1.0 * np.exp(0.6 * e[8])
    rna_cyto = 0.35 * np.exp(0.5 * e[9])
    agp_mem = np.exp(0.6 * e[10])
    golgi_size = b["golgi"] * np.exp(0.3 * e[11])
    mito_tex = 0.5 * np.exp(0.5 * e[12])
    mito_conc = b["mito_conc"] * np.exp(0.5 * e[13])
    frac_round = 1.0 / (1.0 + np.exp(-(-2.8 + 1.3 * e[14])))
    level = {ch: b[ch.lower()] * np.exp(0.25 * e[15 + i]) for i, ch in enumerate(FLUO_CHANNELS)}

    # Cell centres: light rejection sampling so nuclei rarely overlap.
    centres = []
    min_d = 2.2 * nuc_r
    for _ in range(n * 6):
        if len(centres) == n:
            break
        p = rng.uniform(-0.04 * size, 1.04 * size, 2)
        if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 > min_d**2 for q in centres):
            centres.append(p)
    if truth is not None:
        pts = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
        truth["centres"] = pts
        truth["n_cells"] = int(((pts >= 0) & (pts < size)).all(axis=1).sum())
    layers = {
        k: np.zeros((size, size), np.float32) for k in ("nuc", "cell", "er", "mito", "mem", "golgi", "dna", "rna")
    }
    for cy, cx in centres:
        rounded = rng.random() < frac_round
        nr = nuc_r * np.exp(rng.normal(0, 0.12)) * (0.72 if rounded else 1.0)
        asp = 1.0 if rounded else aspect * np.exp(rng.normal(0, 0.08))
        theta = rng.uniform(0, np.pi)
        cr = nr * cell_scale * np.exp(rng.normal(0, 0.12)) * (0.62 if rounded else 1.0)
        harm = rng.normal(0, irregular / 2, 2) * (0.3 if rounded else 1.0)
        phase = rng.uniform(0, 2 * np.pi, 2)
        jitter = np.exp(rng.normal(0, 0.15, 4))
        golgi_dir = rng.uniform(0, 2 * np.pi)
        reach = cr * (1.0 + abs(harm).sum()) + 2 * scale
        y0, y1 = int(max(0, np.floor(cy - reach))), int(min(size, np.ceil(cy + reach)))
        x0, x1 = int(max(0, np.floor(cx - reach))), int(min(size, np.ceil(cx + reach)))
        if y1 <= y0 or x1 <= x0:
            continue
        dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
        ct, st = np.cos(theta), np.sin(theta)
        u = (dx * ct + dy * st) / (nr * np.sqrt(asp))
        v = (-dx * st + dy * ct) / (nr / np.sqrt(asp))
        rn = np.sqrt(u * u + v * v)
        nuc = np.clip((1.0 - rn) * nr / (1.2 * scale) + 0.5, 0.0, 1.0)
        d = np.sqrt(dx * dx + dy * dy)
        phi = np.arctan2(dy, dx)
        shape = 1.0 + harm[0] * np.cos(2 * phi + phase[0]) + harm[1] * np.cos(3 * phi + phase[1])
        rb = cr * np.clip(shape, 0.45, None)  # keep the outline star-shaped around the nucleus
        rc = d / rb
        cell = np.clip((1.0 - rc) * rb / (1.5 * scale) + 0.5, 0.0, 1.0)
        cyto = cell * (1.0 - nuc)
        gy, gx = cy + 1.35 * nr * np.sin(golgi_dir), cx + 1.35 * nr * np.cos(golgi_dir)
        gr = golgi_size * nr
        golgi = np.exp(-(((dy + cy - gy) ** 2 + (dx + cx - gx) ** 2) / (2 * gr * gr))) * cyto
        mem = np.exp(-(((rc - 0.97) * rb / (1.3 * scale)) ** 2)) * (rc < 1.15)
        dna_boost = 1.8 if rounded else 1.0
        sl = (slice(y0, y1), slice(x0, x1))
        for name, val in (
            ("nuc", nuc),
            ("cell", cell),
            ("er", cyto * np.exp(-er_conc * rc) * jitter[0]),
            ("mito", cyto * np.exp(-mito_conc * rc) * jitter[1]),
            ("mem", mem * jitter[2]),
            ("golgi", golgi * jitter[2]),
            ("dna", nuc * jitter[3] * dna_boost),
            ("rna", nuc * jitter[3]),
        ):
            np.maximum(layers[name][sl], val, out=layers[name][sl])

    fine = _smooth_noise(rng, size, 0.7 * scale)
    mid = _smooth_noise(rng, size, 1.5 * scale)
    spots = np.maximum(_smooth_noise(rng, size, 1.0 * scale) - 1.2, 0.0)
    grains = _smooth_noise(rng, size, 0.9 * scale)
    out = {}
    out["DNA"] = level["DNA"] * layers["dna"] * np.clip(1.0 + dna_tex * fine, 0.1, None)
    out["ER"] = level["ER"] * layers["er"] * np.clip(1.0 + er_tex * mid, 0.1, None)
    cyto_all = layers["cell"] * (1.0 - layers["nuc"])
    out["RNA"] = level["RNA"] * (rna_cyto * cyto_all + 0.45 * layers["rna"] * (1.0 + 2.5 * nucleoli * spots))
    out["AGP"] = level["AGP"] * (0.9 * agp_mem * layers["mem"] + 1.3 * layers["golgi"] / agp_mem + 0.12 * cyto_all)
    out["Mito"] = level["Mito"] * layers["mito"] * np.clip(1.0 + 1.6 * mito_tex * grains, 0.0, None)
    # Brightfield: cells absorb/scatter a little; defocused planes show opposite halos at cell edges.
    cell_m = layers["cell"]
    halo = ndimage.gaussian_filter(cell_m, 1.0 * scale) - ndimage.gaussian_filter(cell_m, 3.0 * scale)
    grain_bf = 0.015 * (1.0 + 1.5 * abs(e[14])) * mid * cell_m
    out["Brightfield"] = 1.0 - 0.05 * cell_m - 0.035 * layers["nuc"] + grain_bf
    out["HighZBF"] = 1.0 + 0.25 * halo - 0.02 * cell_m + 0.5 * grain_bf
    out["LowZBF"] = 1.0 - 0.25 * halo - 0.04 * cell_m + 0.5 * grain_bf
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def _to_counts(signal: dict, plate: _Plate, rng: np.random.Generator) -> dict[str, np.ndarray]:
    exposure = np.exp(rng.normal(0, 0.03))
    images = {}
    for ch in ALL_CHANNELS:
        if ch in FLUO_CHANNELS:
            mean = (signal[ch] + AUTOFLUORESCENCE / LEVELS[ch]) * LEVELS[ch]
        else:
            mean = signal[ch] * BF_LEVEL
        mean = np.maximum(mean * (plate.gains[ch] * exposure) * plate.illum_fields[ch], 0.0)
        # Shot noise (Poisson, variance PHOTON_GAIN * mean counts) + Gaussian read noise, drawn as one Gaussian: even
        # the background holds ~60 photons, where the Gaussian approximation of the Poisson is accurate, and a normal
        # draw is several times cheaper than a Poisson one (it dominated generation time).
        std = np.sqrt(PHOTON_GAIN * mean + READ_NOISE**2)
        counts = mean + CAMERA_OFFSET + std * rng.standard_normal(mean.shape, dtype=np.float32)
        images[ch] = np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
    return images


# ----------------------------------------------------------------------------------------------------------------
# Writing


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


def _site_tasks(plate: _Plate, wells: list[str], layout: pd.DataFrame, missing: float, seed: int):
    tasks = []
    for well in wells:
        sites = list(range(1, plate.n_sites + 1))
        mrng = np.random.default_rng([seed, _key("missing", plate.barcode, well)])
        if missing > 0 and mrng.random() < missing:
            k = int(mrng.integers(1, 3))
            drop = set(mrng.choice(sites, size=min(k, len(sites) - 1), replace=False).tolist())
            sites = [s for s in sites if s not in drop]
        tasks.append((well, sites))
    return tasks


def _render_well(args) -> list[tuple[str, int]]:
    (plate, well, sites, size, seed, compound, out_dir) = args
    row, col = parse_well(well)
    edge = row in (1, 16) or col in (1, 24)
    effect, _ = compound_effect(*compound, plate.cell_line, seed)
    well_rng = np.random.default_rng([seed, _key("well", plate.barcode, well)])
    effect = effect + well_rng.normal(0, 0.08, N_EFFECTS)
    folder = Path(out_dir) / plate.folder
    written = []
    for site in sites:
        rng = np.random.default_rng([seed, _key("site", plate.barcode, well, site)])
        signal = render_site(size, plate.cell_line, effect, rng, edge)
        for ch, img in _to_counts(signal, plate, rng).items():
            name = phenix_filename(row, col, site, CHANNEL_NUMBER[ch])
            _write_tiff(folder / name, img)
        written.append((well, site))
    return written


def _write_tiff(path: Path, image: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tifffile.imwrite(tmp, image, photometric="minisblack", metadata=None)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


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
    layout = md.compound_layout().set_index("Metadata_Well")
    line_of = md.plate_cell_lines(barcodes)
    all_compound = md.compound_plates()

    plate_objs = []
    for barcode in barcodes:
        idx = all_compound.index(barcode)
        folder = (
            f"images/{BATCH}/images/{barcode}__2020-11-{5 + idx // 12:02d}T{10 + idx % 12:02d}_{(7 * idx) % 60:02d}_00"
            f"-Measurement1/Images"
        )
        p = _Plate(barcode, line_of[barcode], 16 if barcode in sixteen else int(sites), idx, folder)
        p.illum_fields, p.gains = _plate_nuisance(barcode, int(size), seed)
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
            jobs.append((p, well, site_list, int(size), int(seed), compound, str(out)))
    n_sites_total = sum(len(j[2]) for j in jobs)
    bar = tqdm(total=n_sites_total, desc="synthetic sites", unit="site", disable=not progress)
    written: dict[str, list[tuple[str, int]]] = {p.barcode: [] for p in plate_objs}
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
        rows = sorted(written[p.barcode])
        table = _load_data_table(p, rows)
        _write_text(csv_dir / "load_data.csv", table.to_csv(index=False, lineterminator="\n"))
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
            _write_text(csv_dir / "load_data_with_illum.csv", table.to_csv(index=False, lineterminator="\n"))
            load_data[p.barcode] = str(csv_dir / "load_data_with_illum.csv")
        for well in well_names:
            row = layout.loc[well]
            _, potency = compound_effect(
                row["Metadata_broad_sample"], row["Metadata_target"], row["Metadata_pert_type"], p.cell_line, seed
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
                    n_sites=sum(1 for w, _ in written[p.barcode] if w == well),
                )
            )
    truth = pd.DataFrame(truth_rows)
    _write_text(out / "synthetic_truth.csv", truth.to_csv(index=False, lineterminator="\n"))
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
        generator="dinov2_cell.data.synthetic",
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
        cell_lines=result.cell_lines,
        n_sites=result.n_sites,
    )
    _write_text(out / "synthetic_manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return result


def _write_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


def _load_data_table(plate: _Plate, rows: list[tuple[str, int]]) -> pd.DataFrame:
    data = {
        "Metadata_Plate": [plate.barcode] * len(rows),
        "Metadata_Well": [w for w, _ in rows],
        "Metadata_Site": [s for _, s in rows],
    }
    rc = [parse_well(w) for w, _ in rows]
    data["Metadata_Row"] = [r for r, _ in rc]
    data["Metadata_Col"] = [c for _, c in rc]
    for ch in ALL_CHANNELS:
        data[f"FileName_Orig{ch}"] = [phenix_filename(r, c, s, CHANNEL_NUMBER[ch]) for (r, c), (_, s) in zip(rc, rows)]
    for ch in ALL_CHANNELS:
        data[f"PathName_Orig{ch}"] = [plate.folder] * len(rows)
    return pd.DataFrame(data)


# ----------------------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m dinov2_cell.data.synthetic``."""
    p = argparse.ArgumentParser(
        prog="python -m dinov2_cell.data.synthetic",
        description="Write synthetic CPJUMP1-like Cell Painting plates (Phenix TIFFs + LoadData CSVs) in the "
        "Cell Painting Gallery layout, with real barcodes, plate map and compound targets.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output root (use it as the dataset root)")
    p.add_argument(
        "--plates", default="4", help="number of plates (alternating U2OS/A549) or comma-separated compound barcodes"
    )
    p.add_argument("--wells", default=str(DEFAULT_WELLS), help="number of wells, 'all', or comma-separated wells")
    p.add_argument("--sites", type=int, default=9, help="sites per well")
    p.add_argument(
        "--sixteen-site-plates",
        default="real",
        help="'real' (BR00117015/16/17/19 if generated), 'none', or comma-separated barcodes with 16 sites",
    )
    p.add_argument("--missing-sites", type=float, default=0.0, help="fraction of wells missing 1-2 sites")
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed (output is byte-identical per seed)")
    p.add_argument("--illum", action="store_true", help="also write illumination functions + load_data_with_illum.csv")
    p.add_argument("--workers", type=int, default=1, help="rendering processes (output does not depend on it)")
    p.add_argument("--overwrite", action="store_true", help="replace plates already in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        res = generate_plates(
            args.out,
            plates=args.plates,
            wells=args.wells,
            sites=args.sites,
            sixteen_site_plates=args.sixteen_site_plates,
            missing_sites=args.missing_sites,
            size=args.size,
            seed=args.seed,
            illum=args.illum,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in asdict(res).items() if k in ("out_dir", "plates", "cell_lines", "sites", "n_sites")}
    summary["wells"] = len(res.wells)
    summary["n_images"] = res.n_images
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
