"""Speed of the CellProfiler featuriser (segmentation + cp_measure + per-well median): sites/s per image size.

``python benchmarks/cellprofiler.py [--sizes 96,1080] [--sites 12,2] [--families all] [--workers 2]``

For each size, synthetic sites (one site per well, one A549 plate) are written to a temporary folder and featurised
through :meth:`CellProfilerFeaturiser.featurise_plate` twice in the same run: in the main process and with
``--workers`` processes; the printed speed-up is the ratio of the two, measured back to back. A per-family
breakdown (seconds per site for segmentation and each cp_measure family, on the first site) tells where the time
goes. The nucleus size is estimated once and fixed, so that both runs do identical work.

The numbers depend on the machine and on what else runs on it (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def _families(value: str) -> tuple[str, ...]:
    from dinov2_cell.profiles.cellprofiler import FAMILIES

    return FAMILIES if value == "all" else tuple(v.strip() for v in value.split(",") if v.strip())


def main() -> None:
    """Run the benchmark and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="96,1080", help="image sides (pixels)")
    p.add_argument("--sites", default="12,2", help="sites per size (one value per size)")
    p.add_argument("--families", default="all", help="measurement families (comma-separated) or all")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the parallel run")
    args = p.parse_args()

    from dinov2_cell.profiles.cellprofiler import CellProfilerFeaturiser, MeasureSettings, measure_objects
    from dinov2_cell.profiles.driver import PlateSource
    from dinov2_cell.profiles.segmentation import SegmentationSettings, segment_site
    from dinov2_cell.synthetic import generate_plates
    from dinov2_cell.synthetic.biology import select_wells

    sizes = [int(s) for s in args.sizes.split(",")]
    n_sites = [int(s) for s in args.sites.split(",")]
    if len(n_sites) != len(sizes):
        raise SystemExit("error: --sites needs one count per size")
    families = _families(args.families)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; families: {','.join(families)}")
    rows = []
    for size, n in zip(sizes, n_sites):
        with tempfile.TemporaryDirectory() as root:
            wells = select_wells(n)
            generate_plates(root, plates="BR00116991", wells=wells, sites=1, size=size, progress=False)
            measure = MeasureSettings(families=families)
            source = PlateSource(root, channels="fluo")
            probe = CellProfilerFeaturiser(SegmentationSettings(), measure)
            seg = probe.plate_segmentation(probe.open_plate(source, "BR00116991"))
            timings = {}
            for workers in (0, args.workers):
                feat = CellProfilerFeaturiser(seg, measure, num_workers=workers, progress=False)
                ds = feat.open_plate(source, "BR00116991")
                t0 = time.perf_counter()
                table = feat.featurise_plate("BR00116991", ds)
                timings[workers] = time.perf_counter() - t0
                n_feat = table.shape[1]
            # per-family breakdown on the first site (after a warm-up of every family)
            ds = CellProfilerFeaturiser(seg, measure).open_plate(source, "BR00116991")
            img = np.asarray(ds.get_image(0), dtype=np.float64)
            names = list(ds.channel_names)
            t0 = time.perf_counter()
            masks = segment_site(img, names, seg)
            parts = {"segmentation": time.perf_counter() - t0}
            for fam in families:
                t0 = time.perf_counter()
                measure_objects(img, names, masks, MeasureSettings(families=(fam,)))
                parts[fam] = time.perf_counter() - t0
            rows.append((size, len(ds), timings, int(masks["Nuclei"].max()), n_feat, parts))
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print()
    print(f"{'size':>5} {'sites':>5} {'1 proc sites/s':>15} {f'{args.workers} workers sites/s':>18} {'speed-up':>8}")
    for size, n, t, _, _, _ in rows:
        s1, s2 = n / t[0], n / t[args.workers]
        print(f"{size:>5} {n:>5} {s1:>15.3f} {s2:>18.3f} {s2 / s1:>8.2f}")
    print()
    for size, _, _, n_obj, n_feat, parts in rows:
        total = sum(parts.values())
        shares = ", ".join(f"{k} {v:.2f}s ({v / total:.0%})" for k, v in parts.items())
        print(f"{size} px, first site ({n_obj} nuclei, {n_feat} well columns): {total:.2f}s = {shares}")


if __name__ == "__main__":
    main()
