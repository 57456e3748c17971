"""Fixtures for the evaluation tests: well profiles with planted structure, made on the fly."""

import numpy as np
import pandas as pd
import pytest


def planted_profiles(
    plates=(("U2OS", 5), ("A549", 6)),
    n_compounds=12,
    n_dmso=6,
    dim=16,
    noise=0.5,
    structure=1.0,
    seed=0,
):
    """One well per compound per plate, DMSO wells diffuse around the origin.

    Compound c has a center ``structure * (target direction + own direction)``; compounds 2t and 2t+1 share target
    ``T{t}``. Each well is its compound center plus ``noise`` Gaussian noise; ``structure=0`` gives pure noise.

    Returns:
        Profile table with the Metadata columns of our profiles and features f00..f{dim-1}.
    """
    rng = np.random.default_rng(seed)
    target_dir = rng.normal(size=(n_compounds // 2, dim))
    centers = structure * (target_dir[np.arange(n_compounds) // 2] + rng.normal(size=(n_compounds, dim)))
    wells = [f"{'ABCDEFGH'[i // 12]}{i % 12 + 1:02d}" for i in range(n_compounds + n_dmso)]
    meta, feats = [], []
    k = 0
    for line, n in plates:
        for _ in range(n):
            plate = f"PL{k:03d}"
            k += 1
            for i, well in enumerate(wells):
                is_cpd = i < n_compounds
                meta.append(
                    dict(
                        Metadata_Plate=plate,
                        Metadata_Well=well,
                        Metadata_broad_sample=f"BRD-{i:03d}" if is_cpd else "",
                        Metadata_pert_iname=f"cpd{i}" if is_cpd else "DMSO",
                        Metadata_target=f"T{i // 2}" if is_cpd else "",
                        Metadata_cell_line=line,
                    )
                )
                feats.append((centers[i] if is_cpd else 0.0) + noise * rng.normal(size=dim))
    return pd.concat(
        [pd.DataFrame(meta), pd.DataFrame(np.array(feats), columns=[f"f{j:02d}" for j in range(dim)])], axis=1
    )


def shuffle_labels(df, seed=0):
    """Permute compound labels (and their annotations) among the compound wells of each plate independently."""
    rng = np.random.default_rng(seed)
    out = df.copy()
    cols = ["Metadata_broad_sample", "Metadata_pert_iname", "Metadata_target"]
    for _, idx in out.groupby("Metadata_Plate").groups.items():
        cpd = [i for i in idx if out.at[i, "Metadata_pert_iname"] != "DMSO"]
        perm = rng.permutation(cpd)
        out.loc[cpd, cols] = df.loc[perm, cols].to_numpy()
    return out


@pytest.fixture(scope="session")
def planted():
    """The default planted table (11 plates: 5 U2OS, 6 A549)."""
    return planted_profiles()


@pytest.fixture()
def make_planted():
    """The planted-profile factory and the label shuffler."""
    return planted_profiles, shuffle_labels
