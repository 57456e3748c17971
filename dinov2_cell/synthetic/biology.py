"""The invented biology of synthetic plates: which plates and wells, each cell line's baseline, each compound's effect.

Plates, wells, compounds and targets are the real CPJUMP1 ones (packaged metadata, :mod:`dinov2_cell.data.metadata`);
the biology is invented but structured so that evaluation means something. Every compound has a reproducible
phenotype, a :data:`N_EFFECTS`-d effect vector (cell count / toxicity, nuclear size and shape, cell size and
irregularity, DNA texture, ER and mitochondria perinuclear concentration and texture, nucleoli, RNA distribution,
membrane vs Golgi actin stain, Golgi size, fraction of rounded/condensed cells, per-channel intensity) = potency x
(0.6 x its target's direction + 0.4 x its own + 0.3 x a cell-line-specific one). Compounds sharing a target thus look
alike; about 30 % of compounds are (nearly) inactive, like many real ones, and positive controls are strong. DMSO has
no effect. Each cell line has its own baseline morphology (:data:`CELL_LINE_BASELINES`) and its own sensitivity to
each compound.
"""

from __future__ import annotations

import zlib
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


def _direction(seed: int, *parts) -> np.ndarray:
    return np.random.default_rng([seed, stable_key(*parts)]).standard_normal(N_EFFECTS)


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
    rng = np.random.default_rng([seed, stable_key("potency", broad_sample)])
    if pert_type == "control":
        base = rng.uniform(0.9, 1.4)
    elif rng.random() < 0.3:
        base = rng.uniform(0.0, 0.12)
    else:
        base = rng.uniform(0.35, 1.2)
    sens = np.exp(
        0.25 * np.random.default_rng([seed, stable_key("sensitivity", broad_sample, cell_line)]).standard_normal()
    )
    potency = float(base * sens)
    t = _direction(seed, "target", target or broad_sample)
    c = _direction(seed, "compound", broad_sample)
    ell = _direction(seed, "line", broad_sample, cell_line)
    return potency * (0.6 * t + 0.4 * c + 0.3 * ell), potency
