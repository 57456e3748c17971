"""The synthetic generator against properties that follow from its documented parameters (not from its own output).

The golden hash in test_synthetic.py pins the output; these tests check that the output is right:

- the camera model: counts = (signal x level + autofluorescence) x gain x exposure x illumination + offset, with
  shot-noise variance PHOTON_GAIN x signal counts plus read noise (and the 1/12 of rounding to integers);
- a hand-sized case with a single cell: outside the cell's reach every fluorescent channel is exactly 0 and the
  in-focus brightfield exactly 1; the nucleus is one blob around the cell centre with the cell line's radius;
- written plates: brightfield counts minus the offset, divided by the written illumination function, are flat.
"""

import math

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from dinov2_cell.data.names import ALL_CHANNELS, FLUO_CHANNELS
from dinov2_cell.synthetic import generate_plates, render_site
from dinov2_cell.synthetic.biology import CELL_LINE_BASELINES, N_EFFECTS
from dinov2_cell.synthetic.rendering import (
    AUTOFLUORESCENCE,
    BF_LEVEL,
    CAMERA_OFFSET,
    LEVELS,
    PHOTON_GAIN,
    READ_NOISE,
    SyntheticPlate,
    to_counts,
)

SIGNAL = {
    "DNA": 0.0,
    "ER": 0.5,
    "RNA": 1.0,
    "AGP": 2.0,
    "Mito": 0.25,
    "Brightfield": 1.0,
    "HighZBF": 0.9,
    "LowZBF": 1.1,
}


def _expected_mean(ch, exposure, illum=1.0):
    """Mean counts of a flat signal under the documented camera model (plate gain 1)."""
    level = (SIGNAL[ch] * LEVELS[ch] + AUTOFLUORESCENCE) if ch in FLUO_CHANNELS else SIGNAL[ch] * BF_LEVEL
    return level * exposure * illum + CAMERA_OFFSET


@pytest.mark.parametrize("seed", [0, 1])
def test_camera_counts_follow_the_documented_noise_model(seed):
    size = 128
    field = np.ones((size, size), np.float32)
    field[:, size // 2 :] = 0.5  # right half at half illumination
    fields, gains = {ch: field for ch in ALL_CHANNELS}, dict.fromkeys(ALL_CHANNELS, 1.0)
    plate = SyntheticPlate("BR00116991", "U2OS", 1, 0, "", fields, gains)
    signal = {ch: np.full((size, size), SIGNAL[ch], np.float32) for ch in ALL_CHANNELS}
    counts = to_counts(signal, plate, np.random.default_rng(seed))
    assert set(counts) == set(ALL_CHANNELS) and all(c.dtype == np.uint16 for c in counts.values())

    # one exposure factor for the whole site, estimated from one channel (RNA, left half)
    left = {ch: counts[ch][:, : size // 2].astype(np.float64) for ch in ALL_CHANNELS}
    right = {ch: counts[ch][:, size // 2 :].astype(np.float64) for ch in ALL_CHANNELS}
    exposure = (left["RNA"].mean() - CAMERA_OFFSET) / (LEVELS["RNA"] + AUTOFLUORESCENCE)
    assert abs(math.log(exposure)) < 5 * 0.03  # exposure ~ exp(N(0, 0.03))
    for ch in ALL_CHANNELS:
        for half, illum in ((left, 1.0), (right, 0.5)):
            mean = _expected_mean(ch, exposure, illum)
            signal_counts = mean - CAMERA_OFFSET
            var = PHOTON_GAIN * signal_counts + READ_NOISE**2 + 1 / 12  # shot + read + rounding
            n = half[ch].size
            # means to 5 standard errors, variances to 6 % (the standard error of a variance is ~1.6 % here)
            assert half[ch].mean() == pytest.approx(mean, abs=5 * math.sqrt(var / n)), (ch, illum)
            assert half[ch].var() == pytest.approx(var, rel=0.06), (ch, illum)


def _one_cell_site(seed, size=160, cell_line="U2OS"):
    effect = np.zeros(N_EFFECTS)
    effect[0] = -10.0  # density x exp(-4): the Poisson draw is ~always 0 and clipped to one cell
    truth = {}
    signal = render_site(size, cell_line, effect, np.random.default_rng(seed), truth=truth)
    return signal, truth


@pytest.mark.parametrize("seed", [3, 8])
def test_a_single_cell_site_by_hand(seed):
    size, line = 160, "U2OS"
    b = CELL_LINE_BASELINES[line]
    signal, truth = _one_cell_site(seed, size, line)
    assert truth["centres"].shape == (1, 2)
    cy, cx = truth["centres"][0]
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    dist = np.hypot(yy - cy, xx - cx)
    nuc_r = b["nuc_r"] * size  # the documented nucleus radius (fraction of the field of view)
    scale = size / 96
    # a generous bound on the cell's reach: nucleus radius x cell scale, 3-sigma size jitters, full irregularity
    reach = nuc_r * math.exp(0.36) * b["cell_scale"] * math.exp(0.36) * (1 + 2 * 0.55) + 2 * scale
    far = dist > reach
    assert far.sum() > 0.2 * size * size  # the check below covers a large part of the image
    for ch in FLUO_CHANNELS:
        assert (signal[ch] >= 0).all(), ch
        assert not signal[ch][far].any(), ch  # no cell there: no fluorescence at all
        assert signal[ch][~far].max() > 0, ch
    assert (signal["Brightfield"][far] == 1.0).all()  # full transmission away from the cell
    assert signal["Brightfield"][~far].min() < 1.0  # the cell absorbs

    nucleus = signal["DNA"] > 0
    _, n_blobs = ndimage.label(nucleus)
    assert n_blobs == 1
    if 0 <= cy < size and 0 <= cx < size:
        assert nucleus[int(cy), int(cx)]
    # the blob's equivalent radius is the cell line's nucleus radius up to the documented jitters and soft edge;
    # the whole blob lies within the elongated nucleus' reach
    if (min(cy, cx) > 2 * nuc_r) and (max(cy, cx) < size - 2 * nuc_r):
        r_eq = math.sqrt(nucleus.sum() / math.pi)
        assert 0.6 * 0.72 * nuc_r < r_eq < 1.5 * nuc_r + 1.0, (r_eq, nuc_r)
    aspect = max(1.0, b["aspect"]) * math.exp(3 * 0.08)
    assert dist[nucleus].max() < nuc_r * math.exp(0.36) * math.sqrt(aspect) + 0.6 * scale + 1.0


def test_written_brightfield_divided_by_its_illumination_function_is_flat(tmp_path):
    generate_plates(
        tmp_path / "p",
        plates=["BR00116991"],
        wells=["A01", "A02"],
        sites=4,
        size=64,
        seed=5,
        illum=True,
        progress=False,
    )
    folder = tmp_path / "p" / "illum" / "2020_11_04_CPJUMP1" / "BR00116991"
    func = np.load(folder / "BR00116991_IllumBrightfield.npy").astype(np.float64)
    assert func.shape == (64, 64) and func.min() > 0
    images = sorted((tmp_path / "p").rglob("*-ch8sk1fk1fl1.tiff"))  # Phenix ch8 = Brightfield
    assert len(images) == 8
    mean = np.mean([tifffile.imread(p).astype(np.float64) for p in images], axis=0) - CAMERA_OFFSET
    flat = mean / func
    spread_raw = mean.std() / mean.mean()
    spread_flat = flat.std() / flat.mean()
    # cells take at most ~9 % of the transmitted light and shot noise ~1.4 % per pixel after averaging 8 sites, so the
    # corrected image is flat to a few percent, far flatter than the vignetted raw one
    # (measured: 1.2 % against 5.1 % raw)
    assert spread_flat < 0.025 and spread_flat < 0.4 * spread_raw, (spread_flat, spread_raw)
    # the function is the field over its 2nd percentile (>= 0.3): the level is BF_LEVEL x gain x exposure x that
    # percentile x transmission, gain within exp(+-3 x 0.15)
    assert 0.3 * math.exp(-0.45) * 0.9 < np.median(flat) / BF_LEVEL < math.exp(0.45) * 1.1
