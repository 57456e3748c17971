"""Feature normalisation against DMSO wells, as JUMP profiling pipelines do before evaluation.

Methods (``method``):

* ``none``: unchanged.
* ``standardize``: per plate, ``(x - mean_DMSO) / std_DMSO`` (population std, as scikit-learn's StandardScaler and
  pycytominer's ``normalize(method="standardize")``); a feature constant on a plate's DMSO wells is only centred.
* ``robustize``: per plate, ``(x - median_DMSO) / (1.4826 * MAD_DMSO)`` (pycytominer's ``mad_robustize`` with the
  normal-consistent MAD); a feature with zero MAD is only centred.
* ``spherize``: ``standardize`` per plate, then ZCA whitening fitted on the pooled DMSO wells of all plates
  (pycytominer's ``Spherize(method="ZCA")`` recipe: ``W = V diag(1 / sqrt(lambda + eps)) V^T`` with ``V, lambda`` the
  eigenvectors/values of the DMSO covariance). It is computed from an SVD of the n_DMSO x D control matrix, so it
  needs no D x D matrix even for ~10^4 features: directions outside the DMSO span have eigenvalue 0 and are scaled by
  ``1 / sqrt(eps)``, exactly as the full ZCA would.

Only DMSO wells are used to fit (no compound label is read), so normalising before a cross-validation split leaks
no label; ``spherize`` pools the DMSO wells of every plate in the table (test plates included), an unsupervised,
transductive step that JUMP pipelines also take over a whole batch.

DMSO wells are recognised by :func:`dinov2_cell.profiles.io.is_control`. A plate with fewer than ``min_controls``
DMSO wells is an error that names the plate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dinov2_cell.profiles.io import PLATE, check_profiles, is_control

METHODS = ("none", "standardize", "robustize", "spherize")
MAD_SCALE = 1.4826
_TINY = 1e-12


def _per_plate(values: np.ndarray, plates: np.ndarray, controls: np.ndarray, robust: bool, min_controls: int):
    out = np.empty_like(values)
    for plate in pd.unique(plates):
        rows = plates == plate
        ctrl = values[rows & controls]
        if len(ctrl) < min_controls:
            raise ValueError(
                f"plate {plate}: {len(ctrl)} DMSO well(s), need at least {min_controls} to normalise against DMSO "
                "(is Metadata_pert_iname / Metadata_broad_sample right for this plate?)"
            )
        if robust:
            center = np.median(ctrl, axis=0)
            scale = MAD_SCALE * np.median(np.abs(ctrl - center), axis=0)
        else:
            center = ctrl.mean(axis=0)
            scale = ctrl.std(axis=0)
        scale = np.where(scale > _TINY, scale, 1.0)
        out[rows] = (values[rows] - center) / scale
    return out


def zca_fit(controls: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Fit ZCA whitening on control rows.

    Args:
        controls: (n, D) control profiles.
        eps: regulariser added to the covariance eigenvalues.

    Returns:
        (mean (D,), V (D, r) eigenvectors spanning the controls, lambda (r,) eigenvalues, eps).
    """
    mean = controls.mean(axis=0)
    centered = controls - mean
    n = len(controls)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    lam = s**2 / max(n - 1, 1)
    keep = lam > _TINY * max(float(lam.max(initial=0.0)), 1.0)
    return mean, vt[keep].T, lam[keep], float(eps)


def zca_apply(x: np.ndarray, fit: tuple[np.ndarray, np.ndarray, np.ndarray, float]) -> np.ndarray:
    """Apply a :func:`zca_fit` whitening: ``(x - mean) W`` with ``W = V diag((lambda+eps)^-1/2) V^T + (I - V V^T)/sqrt(eps)``.

    Args:
        x: (m, D) profiles.
        fit: output of :func:`zca_fit`.

    Returns:
        (m, D) whitened profiles.
    """
    mean, v, lam, eps = fit
    xc = x - mean
    proj = xc @ v
    inside = (proj / np.sqrt(lam + eps)) @ v.T
    outside = (xc - proj @ v.T) / np.sqrt(eps)
    return inside + outside


def normalize_profiles(
    df: pd.DataFrame,
    method: str = "standardize",
    feature_cols: list[str] | None = None,
    plate_col: str = PLATE,
    eps: float = 1e-6,
    min_controls: int = 2,
) -> pd.DataFrame:
    """Normalise features against DMSO wells (see module docstring).

    Args:
        df: profile table (Metadata_Plate, Metadata_pert_iname and/or Metadata_broad_sample, features).
        method: ``none``, ``standardize``, ``robustize`` or ``spherize``.
        feature_cols: features (default: all).
        plate_col: plate column.
        eps: ZCA regulariser (``spherize``).
        min_controls: fewest DMSO wells a plate may have.

    Returns:
        A new DataFrame with float64 normalised features (metadata untouched).

    Raises:
        ValueError: unknown method, missing column, NaN/inf features, or a plate with too few DMSO wells (named).
    """
    if method not in METHODS:
        raise ValueError(f"unknown normalisation {method!r}; choose from {METHODS}")
    feats = check_profiles(df, required=[plate_col], source="normalisation", unique_wells=False)
    feats = list(feature_cols) if feature_cols is not None else feats
    if method == "none":
        return df.copy()
    controls = is_control(df)
    values = df[feats].to_numpy(dtype=np.float64)
    plates = df[plate_col].astype(str).to_numpy()
    values = _per_plate(values, plates, controls, robust=method == "robustize", min_controls=min_controls)
    if method == "spherize":
        values = zca_apply(values, zca_fit(values[controls], eps))
    block = pd.DataFrame(values, columns=feats, index=df.index)
    return pd.concat([df.drop(columns=feats), block], axis=1)[list(df.columns)]
