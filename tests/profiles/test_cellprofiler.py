"""CellProfiler features: segmentation against the generator's truth, cp_measure and pycytominer equivalence, bad
sites, the featuriser through the driver, and the CLI."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from cp_measure.bulk import get_core_measurements, get_correlation_measurements
from pycytominer import aggregate, feature_select, normalize

from dinov2_cell.profiles.cellprofiler import (
    CellProfilerFeaturiser,
    MeasureSettings,
    _aggregate_well,
    channel_feature_name,
    correlation_feature_name,
    is_position_feature,
    measure_objects,
)
from dinov2_cell.profiles.io import PROFILE_METADATA, is_control
from dinov2_cell.profiles.recipe import RecipeSettings, run_recipe
from dinov2_cell.profiles.segmentation import (
    SegmentationSettings,
    SiteSkipped,
    estimate_nucleus_diameter,
    segment_site,
)
from dinov2_cell.synthetic import generate_plates
from dinov2_cell.synthetic import rendering

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def synthetic_site(size, line, seed, effect=None):
    """A rendered site with shot/read noise, scaled like 16-bit images, and its true cell count."""
    rng = np.random.default_rng(seed)
    truth = {}
    effect = np.zeros(20) if effect is None else effect
    signal = rendering.render_site(size, line, effect, rng, truth=truth)
    chans = []
    for c in CHANNELS:
        mean = (signal[c] + rendering.AUTOFLUORESCENCE / rendering.LEVELS[c]) * rendering.LEVELS[c]
        mean = mean + rendering.CAMERA_OFFSET
        noisy = mean + rng.normal(size=mean.shape) * np.sqrt(rendering.PHOTON_GAIN * mean + rendering.READ_NOISE**2)
        chans.append(np.clip(noisy, 0, 65535) / 65535.0)
    return np.stack(chans), truth["n_cells"]


@pytest.mark.parametrize("size", [96, 192])
@pytest.mark.parametrize("line", ["U2OS", "A549"])
def test_nuclei_count_within_15_percent_of_truth(size, line):
    rng = np.random.default_rng(7)
    sites = [synthetic_site(size, line, s, rng.normal(0, 0.5, 20)) for s in range(10)]
    diameter = estimate_nucleus_diameter([img[0] for img, _ in sites[:6]])
    settings = SegmentationSettings(typical_diameter=diameter)
    found = np.array([segment_site(img, CHANNELS, settings)["Nuclei"].max() for img, _ in sites])
    true = np.array([n for _, n in sites])
    assert abs(found.sum() - true.sum()) <= 0.15 * true.sum(), (found, true)
    assert np.mean(np.abs(found - true) / true) <= 0.15, (found, true)


def test_segmentation_compartments_nest():
    img, _ = synthetic_site(96, "U2OS", 3)
    masks = segment_site(img, CHANNELS, SegmentationSettings(typical_diameter=9.0))
    nuc, cells, cyto = masks["Nuclei"], masks["Cells"], masks["Cytoplasm"]
    assert nuc.max() > 0
    # every nucleus lies inside the cell with its label; cytoplasm = cell minus nucleus
    assert np.array_equal(cells[nuc > 0], nuc[nuc > 0])
    assert np.array_equal(cyto, np.where(nuc > 0, 0, cells))
    assert (cells > 0).sum() > 1.5 * (nuc > 0).sum()


@pytest.fixture(scope="module")
def measured():
    img, _ = synthetic_site(64, "A549", 11)
    masks = segment_site(img, CHANNELS, SegmentationSettings(typical_diameter=5.4))
    return img, masks, measure_objects(img, CHANNELS, masks)


def test_one_feature_of_each_family_equals_cp_measure(measured):
    img, masks, table = measured
    core = get_core_measurements()
    corr = get_correlation_measurements()
    c = {name: i for i, name in enumerate(CHANNELS)}
    cells, nuc, cyto = masks["Cells"], masks["Nuclei"], masks["Cytoplasm"]
    ids = np.unique(cells)[1:]
    checks = {
        "Cells_Intensity_MeanIntensity_DNA": core["intensity"](cells, img[c["DNA"]])["Intensity_MeanIntensity"],
        "Nuclei_AreaShape_Area": core["sizeshape"](nuc, None)["Area"],
        "Nuclei_AreaShape_Zernike_2_0": core["zernike"](nuc, None)["Zernike_2_0"],
        "Cells_AreaShape_MaxFeretDiameter": core["feret"](cells, None)["MaxFeretDiameter"],
        "Cells_Texture_Contrast_ER_3_01_256": core["texture"](cells, img[c["ER"]])["Contrast_3_01_256"],
        "Cells_Granularity_2_Mito": core["granularity"](cells, img[c["Mito"]])["Granularity_2"],
        "Cells_RadialDistribution_FracAtD_RNA_1of4": core["radial_distribution"](cells, img[c["RNA"]])[
            "RadialDistribution_FracAtD_1of4"
        ],
        "Cells_RadialDistribution_ZernikeMagnitude_AGP_2_0": core["radial_zernikes"](cells, img[c["AGP"]])[
            "RadialDistribution_ZernikeMagnitude_2_0"
        ],
        "Cells_Correlation_Pearson_DNA_ER": corr["pearson"](img[c["DNA"]], img[c["ER"]], cells)["Correlation_Pearson"],
        "Cells_Correlation_Manders_ER_DNA": corr["manders_fold"](img[c["DNA"]], img[c["ER"]], cells)[
            "Correlation_Manders_2"
        ],
        "Cells_Correlation_Costes_DNA_RNA": corr["costes"](img[c["DNA"]], img[c["RNA"]], cells, scale_max=65535)[
            "Correlation_Costes_1"
        ],
        "Cells_Correlation_RWC_AGP_Mito": corr["rwc"](img[c["AGP"]], img[c["Mito"]], cells)["Correlation_RWC_1"],
    }
    assert list(table.index) == list(ids)
    for name, expected in checks.items():
        np.testing.assert_allclose(table[name].to_numpy(), np.asarray(expected, float), rtol=1e-10, err_msg=name)
    # cytoplasm objects are measured on their own mask
    cyto_ids = np.unique(cyto)[1:]
    from skimage.segmentation import relabel_sequential

    expected = core["intensity"](relabel_sequential(cyto)[0], img[c["ER"]])["Intensity_MeanIntensity"]
    np.testing.assert_allclose(table.loc[cyto_ids, "Cytoplasm_Intensity_MeanIntensity_ER"], expected, rtol=1e-10)


def test_feature_names_follow_cellprofiler(measured):
    _, _, table = measured
    cols = set(table.columns)
    for name in (
        "Nuclei_Texture_AngularSecondMoment_DNA_3_00_256",
        "Cytoplasm_Granularity_16_AGP",
        "Nuclei_Correlation_Manders_AGP_DNA",  # in pycytominer's default blocklist under this spelling
        "Cells_Intensity_IntegratedIntensity_Mito",
        "Cells_AreaShape_FormFactor",
    ):
        assert name in cols, name
    assert not any(is_position_feature(c.split("_", 2)[-1]) for c in cols if "_AreaShape_" in c)
    assert not [c for c in cols if "Location" in c or "Center_X" in c or "BoundingBoxMinimum" in c]
    assert channel_feature_name("Cells", "Location_CenterMassIntensity_X", "DNA").endswith("_X_DNA")
    assert correlation_feature_name("Cells", "Correlation_Costes_2", "DNA", "ER") == "Cells_Correlation_Costes_ER_DNA"


def test_aggregate_and_recipe_equal_pycytominer():
    rng = np.random.default_rng(0)
    objects = pd.DataFrame(rng.normal(size=(30, 4)), columns=[f"Cells_X_{i}" for i in range(4)])
    objects.index = pd.Index(np.arange(1, 31), name="Metadata_ObjectNumber")
    ours = _aggregate_well(objects, "P1", "A01")
    direct = objects.median()
    np.testing.assert_allclose(ours[objects.columns].to_numpy()[0], direct.to_numpy())
    assert int(ours["Metadata_Object_Count"].iloc[0]) == 30
    # recipe: per-plate mad_robustize against DMSO, then feature_select, as direct pycytominer calls
    rows = []
    for p in ("P1", "P2"):
        for w in range(12):
            dmso = w < 5
            base = rng.normal(size=6) + (3.0 if p == "P2" else 0.0)
            rows.append(
                dict(
                    Metadata_Plate=p,
                    Metadata_Well=f"A{w + 1:02d}",
                    Metadata_pert_iname="DMSO" if dmso else f"c{w}",
                    Metadata_broad_sample="" if dmso else f"BRD-{w}",
                    **{f"Cells_F_{i}": v for i, v in enumerate(base)},
                    Cells_F_copy=base[0] * 2 + 1e-3 * rng.normal(),
                    Cells_F_const=1.0,
                )
            )
    df = pd.DataFrame(rows)
    settings = RecipeSettings()
    out = run_recipe(df, settings)
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    parts = []
    for _, g in df.groupby("Metadata_Plate"):
        g = g.assign(Metadata_ref=np.where(is_control(g), "y", "n"))
        n = normalize(g, features=feats, samples="Metadata_ref == 'y'", method="mad_robustize")
        parts.append(n.drop(columns="Metadata_ref"))
    direct = feature_select(
        pd.concat(parts), features=feats, operation=list(settings.operations), na_cutoff=0.0, corr_threshold=0.9
    )
    kept = [c for c in direct.columns if not c.startswith("Metadata_")]
    assert [c for c in out.columns if not c.startswith("Metadata_")] == kept
    assert "Cells_F_const" not in kept and not ({"Cells_F_0", "Cells_F_copy"} <= set(kept))
    np.testing.assert_allclose(out[kept].to_numpy(), direct[kept].to_numpy(), rtol=1e-12)
    assert np.isfinite(out[kept].to_numpy()).all()


def test_recipe_never_leaves_nan():
    rows = []
    rng = np.random.default_rng(1)
    for w in range(10):
        rows.append(
            dict(
                Metadata_Plate="P1",
                Metadata_Well=f"B{w + 1:02d}",
                Metadata_pert_iname="DMSO" if w < 4 else "x",
                Cells_A=rng.normal(),
                Cells_B=rng.normal(),
                Cells_NaN=np.nan if w == 7 else rng.normal(),
                Cells_Inf=np.inf if w == 6 else rng.normal(),  # e.g. a ratio over an empty compartment
            )
        )
    out = run_recipe(pd.DataFrame(rows))
    assert "Cells_NaN" not in out.columns and "Cells_Inf" not in out.columns
    assert np.isfinite(out[["Cells_A", "Cells_B"]].to_numpy()).all()


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda img: np.concatenate([np.full_like(img[:1], 0.002), img[1:]]) + 0, "empty"),
        (lambda img: np.where(np.arange(img.shape[2]) < img.shape[2] // 2, 1.0, img), "saturated"),
        (lambda img: np.concatenate([img[:2], np.zeros_like(img[:1]), img[3:]]), "blank channel"),
    ],
)
def test_bad_sites_are_named_skips(make, reason):
    img, _ = synthetic_site(64, "U2OS", 5)
    bad = make(img)
    if reason == "empty":
        bad[0] += np.random.default_rng(0).normal(0, 0.0004, bad[0].shape)
    with pytest.raises(SiteSkipped) as e:
        segment_site(bad, CHANNELS, SegmentationSettings(typical_diameter=6.0))
    assert e.value.reason == reason
    with pytest.raises(ValueError, match="DNA"):
        segment_site(img[1:], CHANNELS[1:], SegmentationSettings(typical_diameter=6.0))


@pytest.fixture(scope="module")
def tiny_plates(tmp_path_factory):
    root = tmp_path_factory.mktemp("cp_plates")
    generate_plates(
        root,
        plates="BR00116991,BR00116995",
        wells="A02,F06,K06,B09,B21,C11",
        sites=2,
        size=64,
        progress=False,
    )
    return str(root)


FAST = MeasureSettings(families=("intensity", "sizeshape"))


def test_featurise_plate_counts_skips_and_errors(tiny_plates):
    from dinov2_cell.profiles.driver import PlateSource

    source = PlateSource(tiny_plates, channels="fluo")
    feat = CellProfilerFeaturiser(measure=FAST, progress=False)
    ds = feat.open_plate(source, "BR00116991")
    # a missing channel file: the site is skipped and counted, the others measured
    victim = ds.file_paths(0)[2]
    os.rename(victim, victim + ".away")
    try:
        table = feat.featurise_plate("BR00116991", ds)
        assert table.attrs["stats"]["sites_skipped"] == {"unreadable": 1}
        assert len(table) == 6
        well = ds.site_key(0)[1]
        assert table.loc[table["Metadata_Well"] == well, "Metadata_n_sites"].item() == "1"
        strict = CellProfilerFeaturiser(measure=FAST, progress=False, on_bad_site="error")
        with pytest.raises(Exception, match=f"well {well}|{os.path.basename(victim)}"):
            strict.featurise_plate("BR00116991", ds)
    finally:
        os.rename(victim + ".away", victim)


def test_cli_end_to_end_resume_and_bad_input(tiny_plates, tmp_path):
    out = tmp_path / "cp"
    cmd = [
        sys.executable,
        "-m",
        "dinov2_cell.profiles.cellprofiler",
        "--data-root",
        tiny_plates,
        "--out",
        str(out),
        "--plates",
        "BR00116991",
        "--families",
        "intensity,sizeshape",
        "--num-workers",
        "2",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": REPO}
    # a plate the data root does not hold: exit 2 naming it, and no trace (no folder), so the corrected call below
    # is not refused as a run with other options
    bad = [a if a != "BR00116991" else "BR00116996" for a in cmd]
    r0 = subprocess.run(bad, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert r0.returncode == 2 and "BR00116996" in r0.stderr and r0.stderr.strip().count("\n") == 0, r0.stderr
    assert not out.exists()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    prof = pd.read_parquet(out / "profiles.parquet")
    assert set(PROFILE_METADATA) <= set(prof.columns)
    assert sorted(prof["Metadata_Plate"].unique()) == ["BR00116991"]
    feats = [c for c in prof.columns if not c.startswith("Metadata_")]
    assert feats and np.isfinite(prof[feats].to_numpy()).all()
    assert any("_Intensity_" in c for c in feats) and any("_AreaShape_" in c for c in feats)
    part = out / "parts" / "BR00116991.parquet"
    mtime = part.stat().st_mtime_ns
    r2 = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert part.stat().st_mtime_ns == mtime  # resumed: the part was not recomputed
    changed = cmd[:-5] + ["--families", "intensity", "--no-progress"]
    r3 = subprocess.run(changed, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert r3.returncode == 2 and "error:" in r3.stderr and "differ" in r3.stderr
    # a site limit is part of the recorded settings: the full-plate folder is not reused for it
    fewer = cmd[:-1] + ["--max-sites-per-well", "1", "--no-progress"]
    r5 = subprocess.run(fewer, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert r5.returncode == 2 and "differ" in r5.stderr and "sites_per_well" in r5.stderr
    r4 = subprocess.run(
        cmd[:3] + ["--data-root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert r4.returncode == 2 and r4.stderr.strip().count("\n") == 0 and "nope" in r4.stderr
    assert not (tmp_path / "o").exists()


def test_object_counts_match_the_generators_site_truth(tiny_plates):
    from dinov2_cell.profiles.driver import PlateSource

    truth = pd.read_csv(os.path.join(tiny_plates, "synthetic_sites.csv"), dtype={"Metadata_Plate": str})
    feat = CellProfilerFeaturiser(measure=MeasureSettings(families=("sizeshape",)), progress=False)
    for plate in ("BR00116991", "BR00116995"):
        table = feat.featurise_plate(plate, feat.open_plate(PlateSource(tiny_plates, channels="fluo"), plate))
        found = table["Metadata_Object_Count"].astype(int).sum()
        true = truth.loc[truth["Metadata_Plate"] == plate, "n_cells"].sum()
        assert abs(found - true) <= 0.15 * true, (plate, found, true)
        np.testing.assert_allclose(table["Image_Count_Cells"] * 2, table["Metadata_Object_Count"].astype(float))


def test_correlation_subset(measured):
    img, masks, full = measured
    table = measure_objects(img, CHANNELS, masks, MeasureSettings(families=("correlation",), correlations=("pearson",)))
    assert not table.columns.str.contains("Costes|Manders|RWC").any()
    np.testing.assert_allclose(table["Cells_Correlation_Pearson_DNA_ER"], full["Cells_Correlation_Pearson_DNA_ER"])
    with pytest.raises(ValueError, match="correlation"):
        MeasureSettings(correlations=("kendall",))


def test_select_sites_takes_the_first_sites_in_site_order():
    index = pd.DataFrame(
        {
            "Metadata_Plate": ["P"] * 7,
            "Metadata_Well": ["B02", "A01", "A01", "B02", "A01", "B02", "C03"],
            "Metadata_Site": [9, 3, 1, 2, 10, 4, 5],
        }
    )
    assert CellProfilerFeaturiser(sites_per_well=2).select_sites(index) == [
        ("A01", [2, 1]),
        ("B02", [3, 5]),
        ("C03", [6]),
    ]
    assert CellProfilerFeaturiser().select_sites(index) == [("A01", [2, 1, 4]), ("B02", [3, 5, 0]), ("C03", [6])]
    assert "sites_per_well" not in CellProfilerFeaturiser().describe()
    assert CellProfilerFeaturiser(sites_per_well=3).describe()["sites_per_well"] == 3
    with pytest.raises(ValueError, match="sites_per_well"):
        CellProfilerFeaturiser(sites_per_well=0)


def test_sites_per_well_measures_only_the_first_site(tiny_plates):
    from dinov2_cell.profiles.driver import PlateSource, site_index

    feat = CellProfilerFeaturiser(measure=FAST, sites_per_well=1, progress=False)
    ds = feat.open_plate(PlateSource(tiny_plates, channels="fluo"), "BR00116991")
    table = feat.featurise_plate("BR00116991", ds)
    assert table.attrs["stats"]["sites_selected"] == 6 and (table["Metadata_n_sites"] == "1").all()
    # the row of a well = the median of the objects of its lowest-numbered site, measured by hand
    index = site_index(ds)
    well = table["Metadata_Well"].iloc[0]
    first = int(index[index["Metadata_Well"] == well].sort_values("Metadata_Site").index[0])
    img = np.asarray(ds.get_image(first), dtype=np.float64)
    masks = segment_site(img, list(ds.channel_names), feat.plate_segmentation(ds))
    expected = _aggregate_well(measure_objects(img, list(ds.channel_names), masks, FAST), "BR00116991", well)
    got = table[table["Metadata_Well"] == well]
    feats = [c for c in expected.columns if not c.startswith("Metadata_")]
    np.testing.assert_allclose(got[feats].to_numpy(float), expected[feats].to_numpy(float))
