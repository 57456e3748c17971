"""Python API: a trained teacher as an embedding model for one's own arrays.

::

    import dinov2_cell

    model = dinov2_cell.load("runs/fluo")          # a run folder or an eval/<name>/teacher_checkpoint.pth
    model.channels                                 # ('DNA', 'ER', 'RNA', 'AGP', 'Mito'): the order .embed expects
    feats = model.embed(site)                      # raw (C, H, W) or (N, C, H, W) pixels -> (N, feature_dim) float32

:meth:`EmbeddingModel.embed` applies the same steps, with the same code, as ``python -m dinov2_cell.embed`` does to
each site before the well merge: the illumination correction when functions are given, the run's image
normalisation (the ``normalize``/``percentile_*``/``bit_depth`` keys of its training dataset string, or overrides as
``--dataset-opt`` gives them), the resize to the run's input size, and ``concat(CLS, mean patch token)`` of the
teacher backbone. Runs trained with ``normalize=plate`` scale each site with statistics of its whole plate, which
one array does not carry: they take ``plate_bounds=`` (from :meth:`EmbeddingModel.plate_bounds`, computed from the
plate's images exactly as the embed CLI does, or :meth:`EmbeddingModel.bounds_from_sites` for sites of one's own);
without them ``embed`` raises instead of guessing. The user guide is ``docs/api.md``.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import torch

from dinov2_cell.data.intensity import (
    DEFAULT_PERCENTILES,
    PlateNormalizer,
    apply_illumination,
    make_normalizer,
    plate_bounds,
)
from dinov2_cell.data.names import resolve_channels
from dinov2_cell.models.teacher import INHERITED_DATASET_KEYS, TeacherModel, load_teacher, site_features
from dinov2_cell.profiles.ssl import PRECISIONS, autocast_dtype, default_device, prepare_image


class EmbeddingModel:
    """A loaded teacher with the image pipeline of its run (made by :func:`load`).

    Attributes:
        path: the run folder or checkpoint given to :func:`load`.
        name: the teacher's name (its channel group, e.g. ``fluo``), the prefix of its profile columns.
        channels: channel names in the order :meth:`embed` expects them on axis C.
        feature_dim: length of one site vector, ``2 * embed_dim`` (CLS then mean patch token).
        device: where the backbone runs (:meth:`to` moves it).
        image_size: side the sites are resized to (0: native resolution, centre-cropped to whole patches).
        normalize: the image normalisation (``percentile``, ``plate`` or ``bitdepth``).
        dataset_kwargs: the image keys in force (the run's training dataset string, updated by ``dataset_opts``).
        teacher: the underlying :class:`~dinov2_cell.models.teacher.TeacherModel`.
    """

    def __init__(self, teacher: TeacherModel, dataset_kwargs: Mapping, device):
        self.teacher = teacher
        self.path = teacher.path
        self.name = teacher.name
        self.channels = tuple(resolve_channels(teacher.channels))
        self.feature_dim = 2 * int(teacher.embed_dim)
        self.image_size = int(teacher.image_size)
        self.dataset_kwargs = dict(dataset_kwargs)
        kw = self.dataset_kwargs
        self.normalize = str(kw.get("normalize", "percentile")).strip().lower()
        self._low = float(kw.get("percentile_low", DEFAULT_PERCENTILES[0]))
        self._high = float(kw.get("percentile_high", DEFAULT_PERCENTILES[1]))
        # "plate" comes back as the string "plate": its statistics must come from the plate (see embed).
        self._normalizer = make_normalizer(
            self.normalize,
            percentile_low=self._low,
            percentile_high=self._high,
            bit_depth=int(kw.get("bit_depth", 16)),
        )
        self._illum = str(kw.get("illum", "auto"))
        self.device = torch.device(device)

    def __repr__(self) -> str:
        return (
            f"EmbeddingModel(path={self.path!r}, channels={list(self.channels)}, feature_dim={self.feature_dim}, "
            f"image_size={self.image_size}, normalize={self.normalize!r}, device={str(self.device)!r})"
        )

    def to(self, device) -> "EmbeddingModel":
        """Move the backbone to ``device`` (returns ``self``, as ``torch.nn.Module.to`` does).

        Args:
            device: a torch device or its name (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

        Returns:
            This model.
        """
        device = torch.device(device)
        self.teacher.backbone.to(device)
        self.device = device
        return self

    # ----------------------------------------------------------------------------------------------------- inputs

    def _sites(self, array) -> np.ndarray:
        """``array`` as (N, C, H, W) numpy, checked against the channels (raises ValueError naming them)."""
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        array = np.asarray(array)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise ValueError(
                f"expected a (C, H, W) site or an (N, C, H, W) batch with C = {len(self.channels)} "
                f"({', '.join(self.channels)}), got shape {array.shape}"
            )
        if array.shape[1] != len(self.channels):
            raise ValueError(
                f"{self.path}: this model expects {len(self.channels)} channels in the order "
                f"{', '.join(self.channels)} on axis C, got {array.shape[1]} (array shape {array.shape})"
            )
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise ValueError(f"expected integer or float pixels, got dtype {array.dtype}")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise ValueError("the array holds NaN or infinite values")
        return array

    def _per_site(self, value, n: int, what: str, shape: tuple) -> list:
        """``value`` for each of ``n`` sites: one array of ``shape`` for all, or a stack of ``n`` of them."""
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        value = np.asarray(value, dtype=np.float64 if what == "plate_bounds" else None)
        if value.shape == shape:
            return [value] * n
        if value.shape == (n, *shape):
            return list(value)
        raise ValueError(f"{what}: expected shape {shape} (or {(n, *shape)} for {n} sites), got {value.shape}")

    def _normalise(self, site: np.ndarray, bounds) -> torch.Tensor:
        """One (C, H, W) site (illumination-corrected) -> float32 tensor in [0, 1], as the embed CLI's dataset."""
        if self.normalize == "plate":
            return PlateNormalizer({"": bounds}, self._low, self._high)(site, "")
        return self._normalizer(site, "")

    # ------------------------------------------------------------------------------------------------------ embed

    @torch.no_grad()
    def embed(
        self,
        array,
        *,
        plate_bounds=None,
        illum=None,
        batch_size: int = 64,
        precision: str = "fp32",
    ) -> np.ndarray:
        """Site vectors ``concat(CLS, mean patch token)`` of raw sites, as the embed CLI computes them.

        Args:
            array: numpy array or torch tensor, (C, H, W) for one site or (N, C, H, W), channels in the order of
                :attr:`channels`; the raw pixel values (e.g. the uint16 TIFF values), not yet normalised.
            plate_bounds: for ``normalize=plate`` runs only (required there): the plate's per-channel (low, high)
                intensities, shape (C, 2), or (N, C, 2) for sites of different plates; see :meth:`plate_bounds`.
            illum: illumination functions to divide by first (CellProfiler's "Divide"), shape (C, H, W) or
                (N, C, H, W). The embed CLI divides by them when the plate has them (``illum=auto``); leave
                ``None`` for plates without (or for arrays already divided).
            batch_size: sites per forward pass.
            precision: ``fp32`` (default), ``bf16`` or ``fp16`` autocast, as ``--precision``.

        Returns:
            float32 array (N, :attr:`feature_dim`); N = 1 for a (C, H, W) input.

        Raises:
            ValueError: wrong shape or channel count (the message names the expected channels), non-finite values,
                a ``normalize=plate`` run without ``plate_bounds`` (or bounds given to another run), ``illum`` given
                to an ``illum=no`` run or missing for an ``illum=yes`` run.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
        sites = self._sites(array)
        n, c = sites.shape[:2]
        if self.normalize == "plate":
            if plate_bounds is None:
                raise ValueError(
                    f"{self.path}: this run normalises images per plate (normalize=plate), so a site's pixels are "
                    "scaled with statistics of its whole plate: pass plate_bounds=model.plate_bounds(data_root, "
                    "plate) (as the embed CLI computes them) or model.bounds_from_sites([sites of the plate])"
                )
            bounds = self._per_site(plate_bounds, n, "plate_bounds", (c, 2))
        elif plate_bounds is not None:
            raise ValueError(
                f"{self.path}: plate_bounds given, but this run normalises with normalize={self.normalize}, "
                "not per plate"
            )
        else:
            bounds = [None] * n
        if illum is not None and self._illum == "no":
            raise ValueError(f"{self.path}: illum given, but this run reads images without correction (illum=no)")
        if illum is None and self._illum == "yes":
            raise ValueError(f"{self.path}: this run requires illumination correction (illum=yes): pass illum=")
        illums = [None] * n if illum is None else self._per_site(illum, n, "illum", tuple(sites.shape[1:]))
        distinct = {id(f): f for f in illums if f is not None}.values()  # one check when shared by all sites
        if not all(np.isfinite(f).all() and (f > 0).all() for f in distinct):
            raise ValueError("illum: illumination functions must be finite and positive")
        dtype = autocast_dtype(precision)
        backbone = self.teacher.backbone
        out = []
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            batch = torch.stack(
                [
                    prepare_image(
                        self._normalise(apply_illumination(sites[i], illums[i]), bounds[i]),
                        self.image_size,
                        self.teacher.patch_size,
                    )
                    for i in range(start, stop)
                ]
            ).to(self.device)
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                out.append(site_features(backbone, batch).cpu())
        if not out:
            return np.empty((0, self.feature_dim), dtype=np.float32)
        return torch.cat(out).numpy()

    # -------------------------------------------------------------------------------------------- plate statistics

    def plate_bounds(self, data_root: str | os.PathLike, plate: str, **dataset_opts) -> np.ndarray:
        """A plate's statistics for ``normalize=plate`` runs, exactly as the embed CLI computes them.

        The run's ``plate_stats_sites`` sites of the plate are drawn with its ``seed`` (the draw depends only on the
        seed and the barcode), read as the CLI reads them (illumination correction included), and the run's
        percentiles pooled over them per channel.

        Args:
            data_root: the dataset root (as ``--data-root``).
            plate: the plate's barcode.
            **dataset_opts: further dataset keys, as ``--dataset-opt`` (e.g. ``on_error="skip"``, ``store=...``).

        Returns:
            float64 array (C, 2): per channel the (low, high) intensities mapped to 0 and 1.

        Raises:
            ValueError: the run does not normalise per plate.
        """
        if self.normalize != "plate":
            raise ValueError(f"{self.path}: this run normalises with normalize={self.normalize}, not per plate")
        from dinov2_cell.data.cpjump1_dataset import CPJUMP1Dataset

        kwargs = {**self.dataset_kwargs, **dataset_opts}
        ds = CPJUMP1Dataset(root=os.fspath(data_root), plates=[plate], channels=self.teacher.channels, **kwargs)
        return np.array(ds.normalizer.bounds[plate])

    def bounds_from_sites(self, sites: Sequence) -> np.ndarray:
        """Per-plate statistics from sites of one's own: the run's percentiles pooled over ``sites`` per channel.

        The embed CLI pools ``plate_stats_sites`` (16 by default) randomly drawn sites of the plate; pass a similar
        sample of raw (illumination-corrected, if the plate has functions) sites of one plate.

        Args:
            sites: (C, H, W) arrays, or one (N, C, H, W) array.

        Returns:
            float64 array (C, 2), for :meth:`embed`'s ``plate_bounds``.

        Raises:
            ValueError: the run does not normalise per plate, or a site has the wrong shape.
        """
        if self.normalize != "plate":
            raise ValueError(f"{self.path}: this run normalises with normalize={self.normalize}, not per plate")
        batches = [sites] if isinstance(sites, (np.ndarray, torch.Tensor)) else list(sites)
        if not batches:
            raise ValueError("bounds_from_sites needs at least one site")
        images = [site for batch in batches for site in self._sites(batch)]
        return plate_bounds(images, self._low, self._high)


def load(
    path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    image_size: int | None = None,
    dataset_opts: Mapping | None = None,
) -> EmbeddingModel:
    """Load a trained teacher for :meth:`EmbeddingModel.embed`.

    Args:
        path: a training run folder (its ``eval/final/teacher_checkpoint.pth``, else the newest ``eval/*/``
            checkpoint, as the embed CLI picks) or a ``teacher_checkpoint.pth`` inside a run (its ``config.yaml`` two
            levels up gives the channels, normalisation and input size).
        device: torch device (default: CUDA when available, else CPU).
        image_size: side the sites are resized to (default: the run's ``crops.global_crops_size``; 0 = native
            resolution, centre-cropped to whole patches), as ``--image-size``.
        dataset_opts: image keys overriding the run's, as ``--dataset-opt`` (``normalize``, ``percentile_low``,
            ``percentile_high``, ``bit_depth``, ``illum``; ``plate_stats_sites``, ``seed`` and ``channel_map`` are
            used by :meth:`EmbeddingModel.plate_bounds` only).

    Returns:
        An :class:`EmbeddingModel`.

    Raises:
        FileNotFoundError: no such path, or no checkpoint or ``config.yaml`` under it (the message names the path).
        ValueError: an unknown ``dataset_opts`` key, a checkpoint that cannot be read (named), a bad ``image_size``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint or run directory: {path!r}")
    opts = dict(dataset_opts or {})
    unknown = sorted(set(opts) - set(INHERITED_DATASET_KEYS))
    if unknown:
        raise ValueError(f"dataset_opts: unknown key(s) {unknown}; valid: {list(INHERITED_DATASET_KEYS)}")
    if opts:  # the same conversions as a dataset string ("1" -> 1.0 for percentiles), and the same checks
        from dinov2_cell.data.registry import parse_dataset_str

        parsed = parse_dataset_str("CPJUMP1:" + ":".join(f"{k}={v}" for k, v in opts.items()))
        opts = {k: v for k, v in parsed[1].items() if k in opts}
    device = default_device(None if device is None else str(device))
    try:
        teacher = load_teacher(path, image_size=image_size, device=device)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as e:  # noqa: BLE001  (a truncated or foreign file: say which one)
        raise ValueError(f"{path}: cannot load the teacher checkpoint ({type(e).__name__}: {e})") from e
    return EmbeddingModel(teacher, {**teacher.dataset_kwargs, **opts}, device)
