"""Benchmark: sites/s reading 5-channel uint16 sites through CPJUMP1Dataset vs a bare ``tifffile.imread`` loop.

Run::

    python benchmarks/read_sites.py                 # 20 sites of 5 x 1080 x 1080, a few minutes on 2 cores
    python benchmarks/read_sites.py --sites 40 --size 1080 --repeats 5 --workdir /scratch/bench --keep

What it does, in one run (all ratios come from the same run, same files, same machine):

1. writes ``--sites`` synthetic sites (``dinov2_cell.synthetic``, realistic signal + noise, so the LZW
   compression ratio is representative), uncompressed TIFF, with a LoadData CSV;
2. if the optional ``imagecodecs`` package is importable, an LZW-compressed copy of the 5 fluorescent channels;
3. a prepared store (``dinov2_cell.data.prepare``) of the 5 fluorescent channels;
4. times, for each input, passes over all sites (a warm-up pass first, then the best of ``--repeats``):

   * ``bare imread``: ``[tifffile.imread(p) for p in the site's 5 files]`` -- the limit for TIFF input;
   * ``dataset read_raw``: ``ds.read_raw(i)`` -- index lookup, decode into one C x H x W uint16 array, checks;
   * ``dataset get_image``: ``ds.get_image(i)`` -- the above + per-image percentile normalization to float32
     (what ``ds[i]`` returns without a transform); the float32 pass is compiled (``dinov2_cell.data.fused``) when
     numba is installed;
   * ``get_image, numpy path``: the same with the compiled pass switched off (``DINOV2_CELL_NUMBA=0``; only when
     numba is installed), to show what it buys;
   * ``dataset get_site``: ``ds.get_site(i)`` -- the read + the normalisation bounds, no float conversion (what
     ``ds[i]`` hands ``CellDataAugmentation``, which converts only its crops' pixels);
   * ``get_image + crops`` / ``get_site + crops``: what a training worker pays per site with
     ``augmentations.device=model``: the read, then the paper's 2 x 518 + 8 x 98 crops cut and resized, normalising
     the whole site first vs only the crops' tiles;
   * with ``--num-workers N`` also ``ds[i]`` through a DataLoader with N workers (the training configuration).

Numbers are with a warm page cache (files just written); on network or spinning storage the file reads dominate and
the store's single contiguous read per site matters more. This is a script that prints ratios, not a timed test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import tifffile
import torch

from dinov2_cell.cli import (
    HelpFormatter,
    add_legacy_aliases,
    common_parser,
    positive_int,
    run_main,
    setup_logging,
    workers_parser,
)
from dinov2_cell.data import fused
from dinov2_cell.data.cpjump1_dataset import CPJUMP1Dataset
from dinov2_cell.data.names import FLUO_CHANNELS
from dinov2_cell.data.prepare import prepare_store
from dinov2_cell.synthetic import generate_plates

PLATE = "BR00116991"


def _best_rate(fn: Callable[[int], object], n: int, repeats: int) -> float:
    for i in range(n):  # warm-up: page cache, lazy per-plate state, memmaps
        fn(i)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - t0)
    return n / best


def _loader_rate(ds: CPJUMP1Dataset, workers: int, repeats: int) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=True)
    for _ in loader:
        pass
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in loader:
            pass
        best = min(best, time.perf_counter() - t0)
    return len(ds) / best


@contextlib.contextmanager
def _numpy_normalisation():
    """Switch off the compiled normalisation pass (``DINOV2_CELL_NUMBA=0``) inside the block."""
    before = os.environ.get("DINOV2_CELL_NUMBA")
    os.environ["DINOV2_CELL_NUMBA"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["DINOV2_CELL_NUMBA"]
        else:
            os.environ["DINOV2_CELL_NUMBA"] = before


def make_inputs(work: Path, sites: int, size: int) -> dict[str, Path]:
    """Write the uncompressed plate, its LZW copy (if imagecodecs is available) and the store.

    Args:
        work: working folder.
        sites: number of sites (wells of 4 sites each; rounded up to a multiple of 4).
        size: image side.

    Returns:
        {"tiff": root, "lzw": root (if written), "store": store folder}.
    """
    wells = max(1, -(-sites // 4))
    res = generate_plates(
        work / "tiff",
        plates=[PLATE],
        wells=wells,
        sites=4,
        size=size,
        seed=0,
        progress=False,
        sixteen_site_plates="none",
        workers=2,
    )
    roots = {"tiff": Path(res.out_dir)}
    try:
        import imagecodecs  # noqa: F401

        lzw = work / "lzw"
        csv_src = Path(res.load_data[PLATE])
        csv_dst = lzw / csv_src.relative_to(res.out_dir)
        csv_dst.parent.mkdir(parents=True)
        table = pd.read_csv(csv_src)
        table.to_csv(csv_dst, index=False)
        for ch in FLUO_CHANNELS:
            for folder, name in zip(table[f"PathName_Orig{ch}"], table[f"FileName_Orig{ch}"]):
                src = Path(res.out_dir) / folder / name
                dst = lzw / folder / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(dst, tifffile.imread(src), compression="lzw", photometric="minisblack", metadata=None)
        roots["lzw"] = lzw
    except ImportError:
        pass
    prepare_store(res.out_dir, work / "store", channels="fluo", progress=False)
    roots["store"] = work / "store"
    return roots


def _paper_crops():
    from dinov2_cell.augment.cell_augmentation import CellDataAugmentation

    return CellDataAugmentation((0.32, 1.0), (0.05, 0.32), 8, 518, 98, other_site_view=False, device="model")


class _LazyCrops:
    """The paper-setting crop-only augmentation, built on first use (so --help stays cheap)."""

    aug = None

    def __call__(self, site):
        if self.aug is None:
            self.aug = _paper_crops()
        return self.aug(site)


_CROPS = _LazyCrops()


def run(sites: int, size: int, repeats: int, workers: int, workdir: str | None, keep: bool) -> list[dict]:
    """Build the inputs, time every reader, print the table and the ratios.

    Args:
        sites: sites to read per pass.
        size: image side.
        repeats: timed passes (best kept).
        workers: also time a DataLoader with this many workers (0 = skip).
        workdir: folder for the files (default: a temporary folder).
        keep: keep the files.

    Returns:
        The rows printed (dicts: input, reader, sites_per_s).
    """
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(workdir or tempfile.mkdtemp(prefix="read_sites_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        roots = make_inputs(work, sites, size)
        print(f"inputs written in {time.perf_counter() - t0:.1f} s under {work}", flush=True)
        compiled = "compiled (numba)" if fused.available() else "numpy (numba not installed or DINOV2_CELL_NUMBA=0)"
        print(f"normalisation pass: {compiled}", flush=True)
        rows = []
        for kind in ("tiff", "lzw", "store"):
            if kind not in roots:
                print(f"{kind}: skipped (LZW needs the optional 'imagecodecs' package)")
                continue
            ds = CPJUMP1Dataset(root=roots[kind], channels="fluo", illum="no")
            n = min(sites, len(ds))
            if kind != "store":
                files = [ds.file_paths(i) for i in range(n)]
                rate = _best_rate(lambda i: [tifffile.imread(p) for p in files[i]], n, repeats)
                rows.append(dict(input=kind, reader="bare imread", sites_per_s=rate))
            rows.append(dict(input=kind, reader="dataset read_raw", sites_per_s=_best_rate(ds.read_raw, n, repeats)))
            rows.append(dict(input=kind, reader="dataset get_image", sites_per_s=_best_rate(ds.get_image, n, repeats)))
            if fused.available():  # the same call with the compiled pass switched off: the numpy path
                with _numpy_normalisation():
                    rate = _best_rate(ds.get_image, n, repeats)
                rows.append(dict(input=kind, reader="get_image, numpy path", sites_per_s=rate))
            rows.append(dict(input=kind, reader="dataset get_site", sites_per_s=_best_rate(ds.get_site, n, repeats)))
            # What a training worker pays per site with augmentations.device=model: the read, normalisation and the
            # paper's 2 x 518 + 8 x 98 crops (cut + resize), normalising the whole site first vs only the crops.
            for reader, read in (("get_image + crops", ds.get_image), ("get_site + crops", ds.get_site)):
                torch.manual_seed(0)
                rate = _best_rate(lambda i, read=read: _CROPS(read(i)), n, repeats)
                rows.append(dict(input=kind, reader=reader, sites_per_s=rate))
            if workers:
                sub = torch.utils.data.Subset(ds, range(n))
                rows.append(
                    dict(
                        input=kind,
                        reader=f"DataLoader x{workers} ds[i]",
                        sites_per_s=_loader_rate(sub, workers, repeats),
                    )
                )
        _report(rows, sites, size)
        return rows
    finally:
        if not keep and workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _report(rows: list[dict], sites: int, size: int) -> None:
    table = pd.DataFrame(rows)
    mb = 5 * size * size * 2 / 2**20
    table["MB_per_s"] = table["sites_per_s"] * mb
    print(f"\n{sites} sites of 5 x {size} x {size} uint16 ({mb:.1f} MB/site), warm page cache")
    print(table.to_string(index=False, float_format=lambda v: f"{v:8.1f}"))
    rate = {(r["input"], r["reader"]): r["sites_per_s"] for r in rows}

    def ratio(a, b, label):
        if a in rate and b in rate:
            print(f"  {label:58s} {rate[a] / rate[b]:6.2f}x")

    print("\nratios:")
    for kind in ("tiff", "lzw", "store"):
        ratio((kind, "dataset get_image"), (kind, "get_image, numpy path"), f"{kind}: get_image, compiled / numpy path")
    for kind in ("tiff", "lzw"):
        ratio(
            (kind, "dataset read_raw"), (kind, "bare imread"), f"{kind}: dataset read_raw / bare imread (goal >= 0.8)"
        )
        ratio(
            (kind, "dataset get_image"),
            (kind, "bare imread"),
            f"{kind}: dataset get_image (+normalize) / bare imread (goal >= 0.5)",
        )
        ratio(
            (kind, "dataset get_site"),
            (kind, "bare imread"),
            f"{kind}: dataset get_site (read + bounds, what training reads) / bare imread",
        )
        ratio(
            (kind, "get_site + crops"),
            (kind, "get_image + crops"),
            f"{kind}: read + crops, deferred / normalise-then-crop",
        )
    ratio(
        ("store", "get_site + crops"), ("store", "get_image + crops"), "store: read + crops, deferred / normalise first"
    )
    for kind in ("tiff", "lzw"):
        ratio(("store", "dataset read_raw"), (kind, "bare imread"), f"store read_raw / {kind} bare imread")
        ratio(("store", "dataset read_raw"), (kind, "dataset read_raw"), f"store read_raw / {kind} dataset read_raw")
        ratio(
            ("store", "dataset get_image"),
            (kind, "dataset get_image"),
            f"store get_image / {kind} get_image (goal >= 3)",
        )
        ratio(("store", "dataset get_site"), (kind, "dataset get_site"), f"store get_site / {kind} get_site")
        ratio(
            ("store", "get_site + crops"),
            (kind, "get_site + crops"),
            f"store read + crops / {kind} read + crops (deferred)",
        )


def build_parser() -> argparse.ArgumentParser:
    """Argument parser.

    Returns:
        The parser.
    """
    p = argparse.ArgumentParser(
        prog="python benchmarks/read_sites.py",
        description="Sites/s reading 5-channel uint16 sites: CPJUMP1Dataset (TIFF, LZW TIFF, prepared store) vs a "
        "bare tifffile.imread loop.",
        formatter_class=HelpFormatter,
        parents=[workers_parser(0), common_parser()],
    )
    add_legacy_aliases(p, workers=True)
    p.add_argument("--sites", type=positive_int, default=20, help="sites per timed pass")
    p.add_argument("--size", type=positive_int, default=1080, help="image side in pixels")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed passes (best is kept)")
    p.add_argument("--workdir", default=None, help="folder for the generated files (default: temporary)")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    run(args.sites, args.size, args.repeats, args.num_workers, args.workdir, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog="python benchmarks/read_sites.py"))
