"""The calibrated synthetic plates measured as CPJUMP1 measured real ones: CellProfiler features (cp_measure),
pycytominer's DMSO normalisation, copairs phenotypic activity; and the DMSO-vs-DMSO null at chance.

A small version of ``benchmarks/calibration.py``: the 4 A549 replicate plates, 16 DMSO and 24 treated wells each,
one site per well, the two cheapest measurement families. Measured with this design: 16 of 24 compounds retrieved
(0.67) with the calibrated defaults, 3 of 24 (0.12) with the generator's earlier values (strength 1.0, inactive
share 0.3), none without any compound effect; the DMSO dummies: none of 8. The floor (12 of 24) leaves a margin of
4 compounds under the calibrated value; the small design has fewer DMSO wells and measurement families than the
full benchmark (0.8-0.9 there), hence less power.
"""

import warnings

import numpy as np

from dinov2_cell.data import metadata as md
from dinov2_cell.eval.calibration import calibration_scores
from dinov2_cell.profiles.cellprofiler import CellProfilerFeaturiser, MeasureSettings
from dinov2_cell.profiles.driver import PlateSource, run_profiles
from dinov2_cell.synthetic import generate_plates
from dinov2_cell.synthetic.biology import DEFAULT_PHENOTYPE, PhenotypeSettings, default_plates

ACTIVITY_FLOOR = 0.5


def _wells():
    layout = md.compound_layout()
    dmso = layout[layout["Metadata_broad_sample"] == ""]["Metadata_Well"].tolist()
    treated = layout[layout["Metadata_pert_type"] == "trt"]["Metadata_Well"].tolist()
    pick = lambda items, k: [items[i] for i in np.linspace(0, len(items) - 1, k).round().astype(int)]  # noqa: E731
    return sorted(pick(dmso, 16) + pick(treated, 24))


def _scores(root, phenotype):
    plates = [p for p in default_plates(8) if md.plate_cell_lines([p])[p] == "A549"]
    generate_plates(
        root / "plates", plates=plates, wells=_wells(), sites=1, size=96, phenotype=phenotype, progress=False
    )
    featuriser = CellProfilerFeaturiser(measure=MeasureSettings(families=("intensity", "sizeshape")), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        path = run_profiles(
            featuriser, PlateSource(str(root / "plates"), channels="fluo"), str(root / "cp"), plates, progress=False
        )
    return calibration_scores(path, null_size=2000)["A549"]


def test_calibrated_plates_are_active_and_dmso_null_is_at_chance(tmp_path):
    s = _scores(tmp_path / "calibrated", DEFAULT_PHENOTYPE)
    assert s["n_compounds"] == 24 and s["n_null"] == 8
    assert s["activity"] >= ACTIVITY_FLOOR, s
    assert s["dmso_null"] <= 1 / 8, s  # at most one of eight DMSO dummies "retrieved": chance at p < 0.05
    # Without any compound effect, the same pipeline retrieves (about) nothing: the floor above is phenotype.
    off = PhenotypeSettings.from_overrides(["strength=0"])
    s0 = _scores(tmp_path / "no_effect", off)
    assert s0["activity"] <= 1 / 12 and s0["dmso_null"] <= 1 / 8, s0
