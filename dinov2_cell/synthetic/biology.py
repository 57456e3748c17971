"""The invented biology of synthetic plates: which plates and wells, each cell line's baseline, each compound's effect.

Plates, wells, compounds and targets are the real CPJUMP1 ones (packaged metadata, :mod:`dinov2_cell.data.metadata`);
the biology is invented but structured so that evaluation means something. Every compound has a reproducible
phenotype, a :data:`N_EFFECTS`-d effect vector in five explicit phenotype families (:data:`PHENOTYPE_FAMILIES`: cell
count / toxicity; size and shape of nuclei and cells, rounded/condensed cells; texture of DNA, ER and mitochondria,
nucleoli; spatial distribution of ER, mitochondria, RNA, membrane vs Golgi stain, Golgi size; per-channel intensity)
= strength x potency x (0.6 x its target's direction + 0.4 x its own + 0.3 x a cell-line-specific one)
(:class:`PhenotypeSettings`). Compounds sharing a target thus look alike; 15 % of compounds are (nearly) inactive,
and positive controls are strong. DMSO has no effect. Each cell line has its own baseline morphology
(:data:`CELL_LINE_BASELINES`) and its own sensitivity to each compound.

Calibration (``benchmarks/calibration.py``; results in ``benchmarks/results/calibration.md``): the defaults of
:class:`PhenotypeSettings` are set so that CellProfiler features of the plates (cp_measure + pycytominer, one 96 px
site per well, 4 plates per cell line, all 384 wells), scored the way CPJUMP1 scored real plates, fall inside the
published ranges for both cell lines: phenotypic activity 0.663-0.954 and replicate mAP among all perturbations
0.332-0.571 (``REAL-BENCHMARKS.md``). Only ``strength`` (1.0 -> 1.9) and ``inactive_share`` (0.3 -> 0.15) were
changed from the generator's earlier values; the measured effect of each is in the :class:`PhenotypeSettings`
docstring.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from dinov2_cell.columns import CELL_LINES, WELL
from dinov2_cell.data import metadata as md
from dinov2_cell.data.names import normalize_well

REAL_SIXTEEN_SITE_PLATES = ("BR00117015", "BR00117016", "BR00117017", "BR00117019")
N_EFFECTS = 20
DEFAULT_WELLS = 48

# Cell-line baselines. Lengths are fractions of the image side: --size changes resolution, not the field of view.
CELL_LINE_BASELINES = {
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


def default_plates(n: int) -> list[str]:
    """``n`` compound plates with 9 sites per well, alternating U2OS and A549 (sorted barcodes within a line).

    Args:
        n: number of plates (1..20).

    Returns:
        Barcodes.
    """
    lines = {cl: [p for p in md.compound_plates(cl) if p not in REAL_SIXTEEN_SITE_PLATES] for cl in CELL_LINES}
    order = []
    for i in range(max(len(v) for v in lines.values())):
        for cl in CELL_LINES:
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
        return sorted(layout[WELL])
    if isinstance(wells, str) and not wells.strip().isdigit():
        wells = [w for w in wells.split(",") if w.strip()]
    if not isinstance(wells, (int, np.integer)) and not (isinstance(wells, str) and wells.strip().isdigit()):
        names = sorted({normalize_well(w) for w in wells})
        unknown = [w for w in names if w not in set(layout[WELL])]
        if unknown:
            raise ValueError(f"unknown wells {unknown} (a 384-well plate has A01..P24)")
        return names
    n = int(wells)
    if not 1 <= n <= 384:
        raise ValueError(f"--wells must be 'all', a list, or 1..384, got {n}")
    if n == 384:
        return sorted(layout[WELL])
    dmso = layout[layout["Metadata_broad_sample"] == ""][WELL].tolist()
    n_dmso = max(1, int(round(n / 6))) if n > 1 else 0
    chosen = _spread(sorted(dmso), n_dmso)
    treated = layout[layout["Metadata_broad_sample"] != ""].drop_duplicates("Metadata_broad_sample")
    by_target = treated.groupby("Metadata_target")[WELL].apply(sorted)
    pairs = [w for w in by_target.index if len(by_target[w]) == 2]
    need = n - len(chosen)
    for target in _spread(sorted(pairs), need // 2):
        chosen.extend(by_target[target])
    rest = [w for w in sorted(treated[WELL]) if w not in chosen]
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


def stable_key(*parts) -> int:
    """A stable 32-bit key of ``parts`` (CRC32 of their text), used to seed one generator per entity.

    Args:
        *parts: values naming the entity (e.g. ``"site", plate, well, site``).

    Returns:
        The key.
    """
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode())


# Effect dimensions of each phenotype family (indices into the effect vector; see render_site for what each does).
PHENOTYPE_FAMILIES = {
    "count": (0,),  # cell count / toxicity
    "size_shape": (1, 2, 3, 4, 14),  # nuclear size and elongation, cell size, irregularity, rounded/condensed cells
    "texture": (5, 7, 8, 12),  # DNA, ER and mitochondria texture, nucleoli
    "distribution": (6, 9, 10, 11, 13),  # ER/mito perinuclear concentration, RNA spread, membrane vs Golgi, Golgi size
    "intensity": (15, 16, 17, 18, 19),  # per-channel stain intensity
}


@dataclass(frozen=True)
class PhenotypeSettings:
    """The compound-phenotype parameters of the generator (recorded in ``synthetic_manifest.json``).

    A compound's effect in a cell line is ``strength x potency x (target_weight x t + compound_weight x c +
    line_weight x l)``, each dimension then scaled by its family's weight (:data:`PHENOTYPE_FAMILIES`), with t, c, l
    standard normal directions shared by the compound's target, its own, and its own in this cell line. Potency:
    positive controls uniform in ``control_potency``; other compounds inactive (uniform in ``[0,
    inactive_potency]``) with probability ``inactive_share``, else uniform in ``active_potency``; times a
    log-normal cell-line sensitivity (sd ``line_sensitivity_sd``). Every well adds normal noise (sd ``well_noise``)
    to its effect vector.

    Args:
        strength: global multiplier of every compound effect.
        inactive_share: probability that a (non-control) compound is nearly inactive.
        inactive_potency: upper end of an inactive compound's potency.
        active_potency: (low, high) potency of an active compound.
        control_potency: (low, high) potency of a positive control.
        line_sensitivity_sd: sd of the log cell-line sensitivity.
        target_weight: weight of the target's shared direction.
        compound_weight: weight of the compound's own direction.
        line_weight: weight of the compound's cell-line-specific direction.
        well_noise: sd of the per-well effect noise (well-to-well nuisance).
        family_weights: phenotype family -> multiplier of its effect dimensions (missing families: 1).

    Measured effects (``benchmarks/calibration.py``: CellProfiler intensity/size-shape/texture features of one 96 px
    site per well, 4 plates per cell line, data seed 0; activity = fraction of compounds retrieved vs DMSO, mAP =
    replicate mAP among all perturbations; A549 / U2OS):

    * ``inactive_share`` 0.3 -> 0.15 at strength 1.0 (64 wells per plate): activity 0.66 / 0.70 -> 0.79 / 0.81, mAP
      0.28 / 0.24 -> 0.33 / 0.25. It sets the ceiling of the activity figure.
    * ``strength`` 1.0 -> 2.0 at inactive share 0.15 (64 wells): activity 0.79 / 0.81 -> 0.87 / 0.85, mAP
      0.33 / 0.25 -> 0.39 / 0.39. With all 384 wells (306 compounds as distractors) the replicate mAP is steep in
      the strength: 1.8 -> 0.42 / 0.27 (U2OS under the published 0.332), 2.0 -> 0.56 / 0.48 (seed 1: 0.60 / 0.42;
      A549 over the published 0.571); activity 0.89 / 0.84 and 0.90 / 0.89. Hence 1.9.
    * Phenotype families alone (strength 2.0, 64 wells; every other family's weight 0): cell count 0.00 / 0.00
      activity (one site holds 8-13 cells, so the count is too noisy to retrieve anything), size/shape 0.57 / 0.49,
      texture 0.34 / 0.49, spatial distribution 0.68 / 0.74, intensity 0.58 / 0.60; all families 0.87 / 0.85; no
      effect at all 0.00 / 0.00.
    * The other parameters keep the generator's earlier values (not re-measured).
    """

    strength: float = 1.9  # calibrated (see above)
    inactive_share: float = 0.15  # calibrated (see above)
    inactive_potency: float = 0.12
    active_potency: tuple[float, float] = (0.35, 1.2)
    control_potency: tuple[float, float] = (0.9, 1.4)
    line_sensitivity_sd: float = 0.25
    target_weight: float = 0.6
    compound_weight: float = 0.4
    line_weight: float = 0.3
    well_noise: float = 0.08
    family_weights: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        unknown = [k for k, _ in self.family_weights if k not in PHENOTYPE_FAMILIES]
        if unknown:
            raise ValueError(f"unknown phenotype families {unknown}; choose from {list(PHENOTYPE_FAMILIES)}")
        if not 0.0 <= self.inactive_share <= 1.0:
            raise ValueError(f"inactive_share must be in [0, 1], got {self.inactive_share}")
        for name in ("strength", "inactive_potency", "line_sensitivity_sd", "well_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def dimension_weights(self) -> np.ndarray:
        """Per-dimension multipliers from ``family_weights`` (length :data:`N_EFFECTS`)."""
        w = np.ones(N_EFFECTS)
        for family, weight in self.family_weights:
            w[list(PHENOTYPE_FAMILIES[family])] = float(weight)
        return w

    def describe(self) -> dict:
        """JSON-able settings."""
        out = asdict(self)
        out["family_weights"] = dict(self.family_weights)
        return out

    @classmethod
    def from_overrides(cls, overrides: Sequence[str], base: "PhenotypeSettings | None" = None) -> "PhenotypeSettings":
        """Settings with ``key=value`` overrides (``family.<name>=w`` sets one family weight; pairs as ``lo:hi``).

        Args:
            overrides: e.g. ``["strength=1.5", "family.intensity=0.5", "active_potency=0.4:1.3"]``.
            base: settings to start from (default: the calibrated defaults).

        Returns:
            The new settings.

        Raises:
            ValueError: unknown key or unparsable value, naming it.
        """
        base = base or cls()
        values = asdict(base)
        families = dict(base.family_weights)
        for item in overrides:
            key, sep, raw = item.partition("=")
            key = key.strip()
            try:
                if not sep:
                    raise ValueError("expected key=value")
                if key.startswith("family."):
                    families[key[len("family.") :]] = float(raw)
                elif key in ("active_potency", "control_potency"):
                    lo, hi = raw.split(":")
                    values[key] = (float(lo), float(hi))
                elif key in values and key != "family_weights":
                    values[key] = float(raw)
                else:
                    raise ValueError(f"unknown key; choose from {[k for k in values if k != 'family_weights']}")
            except ValueError as e:
                raise ValueError(f"phenotype setting {item!r}: {e}") from None
        values["family_weights"] = tuple(sorted(families.items()))
        return cls(**values)


DEFAULT_PHENOTYPE = PhenotypeSettings()


def _direction(seed: int, *parts) -> np.ndarray:
    return np.random.default_rng([seed, stable_key(*parts)]).standard_normal(N_EFFECTS)


def compound_effect(
    broad_sample: str,
    target: str,
    pert_type: str,
    cell_line: str,
    seed: int,
    phenotype: PhenotypeSettings = DEFAULT_PHENOTYPE,
) -> tuple[np.ndarray, float]:
    """The effect vector of a compound in a cell line, and its potency (0 for DMSO); see :class:`PhenotypeSettings`.

    Args:
        broad_sample: compound id ("" = DMSO).
        target: its annotated target.
        pert_type: "trt" or "control" (positive controls are strong).
        cell_line: U2OS or A549.
        seed: generator seed.
        phenotype: phenotype parameters.

    Returns:
        (effect vector of length :data:`N_EFFECTS`, potency in this cell line).
    """
    if not broad_sample:
        return np.zeros(N_EFFECTS), 0.0
    ph = phenotype
    rng = np.random.default_rng([seed, stable_key("potency", broad_sample)])
    # The draws keep their order whatever the settings, so a setting changes only the values it governs.
    u_kind, u_value = rng.random(), rng.random()
    if pert_type == "control":
        base = ph.control_potency[0] + (ph.control_potency[1] - ph.control_potency[0]) * u_kind
    elif u_kind < ph.inactive_share:
        base = ph.inactive_potency * u_value
    else:
        base = ph.active_potency[0] + (ph.active_potency[1] - ph.active_potency[0]) * u_value
    z = np.random.default_rng([seed, stable_key("sensitivity", broad_sample, cell_line)]).standard_normal()
    potency = float(ph.strength * base * np.exp(ph.line_sensitivity_sd * z))
    t = _direction(seed, "target", target or broad_sample)
    c = _direction(seed, "compound", broad_sample)
    ell = _direction(seed, "line", broad_sample, cell_line)
    direction = ph.target_weight * t + ph.compound_weight * c + ph.line_weight * ell
    return potency * direction * ph.dimension_weights(), potency
