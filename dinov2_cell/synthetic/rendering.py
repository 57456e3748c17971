"""Rendering one synthetic site: cells drawn from a cell line's baseline and an effect vector, then camera counts.

Nuisance: per plate a per-channel intensity gain and an illumination field (vignetting + a linear gradient; the
illumination functions written with ``illum=True`` are these fields); per well a small random effect and a mild edge
effect; per site a cell density factor, random cell positions and a small exposure change; per pixel shot noise
(Gaussian approximation of the Poisson), read noise and a camera offset. Brightfield planes (Brightfield in focus,
HighZBF / LowZBF above / below focus) are low-contrast: a bright background with slightly darker cells, and opposite
halos at cell edges in the two defocused planes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from dinov2_cell.data.names import ALL_CHANNELS, FLUO_CHANNELS
from dinov2_cell.synthetic.biology import CELL_LINE_BASELINES, stable_key

# Fluorescent signal scale (camera counts at intensity 1) and brightfield background level.
LEVELS = {"DNA": 9000.0, "ER": 4000.0, "RNA": 3500.0, "AGP": 3500.0, "Mito": 4500.0}
BF_LEVEL = 5000.0
CAMERA_OFFSET = 100.0
AUTOFLUORESCENCE = 120.0
READ_NOISE = 4.0
PHOTON_GAIN = 2.0  # counts per detected photon: shot-noise std = sqrt(PHOTON_GAIN * signal)


@dataclass
class SyntheticPlate:
    """One generated plate: barcode, cell line, sites per well, position among compound plates, image folder, and
    its nuisance (per-channel illumination fields and gains)."""

    barcode: str
    cell_line: str
    n_sites: int
    index: int
    folder: str
    illum_fields: dict = field(default_factory=dict)
    gains: dict = field(default_factory=dict)


def plate_nuisance(barcode: str, size: int, seed: int) -> tuple[dict, dict]:
    """A plate's illumination field and intensity gain per channel.

    Args:
        barcode: plate barcode.
        size: image side in pixels.
        seed: generator seed.

    Returns:
        (channel -> float32 H x W field, channel -> gain).
    """
    rng = np.random.default_rng([seed, stable_key("plate", barcode)])
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
    b = CELL_LINE_BASELINES[cell_line]
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


def to_counts(signal: dict, plate: SyntheticPlate, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Camera counts of one site: signal x plate gain x exposure x illumination field, plus noise and offset.

    Args:
        signal: channel -> signal from :func:`render_site`.
        plate: the plate (its gains and fields).
        rng: the site's generator (continues the stream :func:`render_site` used).

    Returns:
        Channel -> uint16 H x W image.
    """
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
