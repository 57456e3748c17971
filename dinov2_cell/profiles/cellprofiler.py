"""CellProfiler features through cp_measure, and the JUMP profiling recipe through pycytominer.

``python -m dinov2_cell.profiles.cellprofiler --data-root ROOT --out DIR [--plates A,B] [--num-workers N]``

Per site (fluorescent channels, raw intensities after illumination correction, scaled to [0, 1] by the bit depth as
CellProfiler's NamesAndTypes does):

1. segmentation (:mod:`dinov2_cell.profiles.segmentation`): nuclei on DNA, cells grown from them on AGP/RNA,
   cytoplasm = cell minus nucleus;
2. measurement of every object with cp_measure's core functions, in every channel: ``Intensity``, ``AreaShape``
   (size/shape, Zernike shape moments, Feret diameters), ``Texture`` (Haralick, scale 3, 256 grey levels, 4
   directions), ``Granularity`` (16 spectrum bins), ``RadialDistribution`` (4 rings and intensity Zernikes), and
   ``Correlation`` (Pearson and slope, Costes, Manders, RWC) between every pair of channels;
3. the object count of the site (``Image_Count_Cells``, averaged over a well's sites).

Names follow CellProfiler's ``Compartment_Family_Feature_Channel[_parameters]`` convention (e.g.
``Cells_Intensity_MeanIntensity_DNA``, ``Nuclei_Texture_Contrast_DNA_3_00_256``, ``Cytoplasm_Granularity_1_Mito``,
``Cells_RadialDistribution_FracAtD_RNA_1of4``, ``Cells_Correlation_Pearson_DNA_ER``,
``Nuclei_Correlation_Manders_AGP_DNA``), so pycytominer's blocklist and the CPJUMP1 profiles' columns line up.
Object position features (``Location_*``, ``AreaShape_Center_*``, bounding box corners, spatial moments other than
the area) are not kept: they say where a cell lies in the field, not what it looks like.

Per well: the median over all cells of all its sites (``pycytominer.aggregate``), ``Metadata_Object_Count`` and
``Metadata_n_sites`` / ``Metadata_n_sites_skipped``. These per-plate tables are the run's parts (atomic, resumable,
through :mod:`dinov2_cell.profiles.driver`). The merge step (:meth:`CellProfilerFeaturiser.finalize`) runs the
recipe of :mod:`dinov2_cell.profiles.recipe`: per-plate ``mad_robustize`` against DMSO wells, then feature
selection; the merged table has no NaN.

Bad sites are skipped and counted per reason in the plate's ``stats.json`` (an empty site: no nucleus; a saturated
channel; a blank channel; an unreadable file, whose error names the site); a well whose sites are all skipped is
left out and counted. ``--on-error raise`` stops at the first one instead, naming the site.

``--max-sites-per-well N`` measures only the first N sites of each well (in site-number order, among the sites present)
when the full plate would cost too much (the demo); the limit is part of the run's recorded settings.

Code: :mod:`~dinov2_cell.profiles.cellprofiler_measure` (cp_measure calls, names, :class:`MeasureSettings`),
:mod:`~dinov2_cell.profiles.cellprofiler_wells` (sites of a well -> its row, the worker pool),
:mod:`~dinov2_cell.profiles.cellprofiler_featuriser` (:class:`CellProfilerFeaturiser`); this module is the command
line and re-exports their public names.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Sequence

from dinov2_cell.cli import (
    HelpFormatter,
    comma_list,
    common_parser,
    data_parser,
    output_parser,
    positive_int,
    run_main,
    setup_logging,
    workers_parser,
)

# The pieces live in sibling modules by responsibility; their public names are importable from here as before.
from dinov2_cell.profiles.cellprofiler_featuriser import CellProfilerFeaturiser
from dinov2_cell.profiles.cellprofiler_measure import (  # noqa: F401
    COMPARTMENTS,
    CORRELATIONS,
    FAMILIES,
    OBJECT_NUMBER,
    MeasureSettings,
    channel_feature_name,
    correlation_feature_name,
    is_position_feature,
    measure_objects,
    shape_feature_name,
)
from dinov2_cell.profiles.cellprofiler_wells import BAD_SITE_POLICIES, COUNT_FEATURE, aggregate_well  # noqa: F401
from dinov2_cell.profiles.driver import PlateSource, run_profiles
from dinov2_cell.profiles.recipe import NORMALIZE_METHODS, RecipeSettings
from dinov2_cell.profiles.segmentation import SegmentationSettings

logger = logging.getLogger("dinov2_cell.profiles")

_aggregate_well = aggregate_well  # the name before the split

# ------------------------------------------------------------------------------------------------------------ CLI


def _diameter(value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX in pixels, got {value!r}") from None
    return lo, hi


class _OldBadSitePolicy(argparse.Action):
    """``--on-bad-site {skip,error}`` (old spelling) -> ``--on-error {skip,raise}``."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, choices=BAD_SITE_POLICIES, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, "raise" if values == "error" else "skip")


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m dinov2_cell.profiles.cellprofiler``."""
    p = argparse.ArgumentParser(
        prog="python -m dinov2_cell.profiles.cellprofiler",
        description="CellProfiler features (cp_measure) of every site, well medians, and the JUMP recipe "
        "(pycytominer: per-plate DMSO normalisation, feature selection). Writes DIR/parts/<plate>.parquet (raw well "
        "medians, resumable) and DIR/profiles.parquet.",
        formatter_class=HelpFormatter,
        parents=[data_parser(), output_parser(), workers_parser(default=0), common_parser()],
    )
    g = p.add_argument_group("CellProfiler features")
    g.add_argument(
        "--nucleus-diameter",
        type=_diameter,
        default=None,
        metavar="MIN,MAX",
        help="nucleus diameter range in pixels (default: estimated on a few sites of each plate)",
    )
    g.add_argument("--threshold", choices=("otsu", "li"), default="otsu", help="threshold of nuclei and cells")
    g.add_argument(
        "--families",
        type=comma_list,
        default=list(FAMILIES),
        metavar="A,B",
        help=f"measurement families, from {','.join(FAMILIES)}",
    )
    g.add_argument(
        "--correlations",
        type=comma_list,
        default=list(CORRELATIONS),
        metavar="A,B",
        help=f"colocalization measures of the correlation family, from {','.join(CORRELATIONS)} (costes is slow)",
    )
    g.add_argument(
        "--max-sites-per-well",
        dest="max_sites_per_well",
        type=positive_int,
        default=None,
        metavar="N",
        help="measure only the first N sites of each well, in site order (default: all sites)",
    )
    # Old spelling, kept hidden for one release: embed's --sites-per-well is a grid layout.
    g.add_argument("--sites-per-well", dest="max_sites_per_well", type=positive_int, help=argparse.SUPPRESS)
    g.add_argument("--normalize", choices=NORMALIZE_METHODS, default="mad_robustize", help="per-plate, DMSO reference")
    g.add_argument(
        "--control-query",
        default=None,
        metavar="QUERY",
        help="pandas query selecting the control wells normalised against; default: Metadata_control_type == "
        "'negcon' when the metadata has that column, else Metadata_pert_iname == 'DMSO' or an empty "
        "Metadata_broad_sample",
    )
    g.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="skip",
        help="an empty, saturated or unreadable site: skip it (counted) or stop naming it",
    )
    g.add_argument("--on-bad-site", dest="on_error", action=_OldBadSitePolicy, help=argparse.SUPPRESS)
    g.add_argument("--metadata", default=None, help="per-well metadata CSV/Parquet (default: packaged CPJUMP1)")
    g.add_argument("--submission", action="store_true", help="also write DIR/submission.csv")
    # SLURM arrays (slurm/launch.sh cellprofiler): the same spellings as embed's.
    g = p.add_argument_group("SLURM arrays")
    g.add_argument(
        "--shard", default=None, metavar="I/N", help="only plates I, I+N, ... of the sorted plates; implies --no-merge"
    )
    g.add_argument("--no-merge", dest="merge", action="store_false", help="write the per-plate parts only")
    g.add_argument("--merge-only", action="store_true", help="only merge the parts present (the final step)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    seg = SegmentationSettings(nucleus_diameter=args.nucleus_diameter, threshold=args.threshold)
    featuriser = CellProfilerFeaturiser(
        segmentation=seg,
        measure=MeasureSettings(families=tuple(args.families), correlations=tuple(args.correlations)),
        recipe=RecipeSettings(normalize=args.normalize, control_query=args.control_query),
        num_workers=args.num_workers,
        on_bad_site="error" if args.on_error == "raise" else "skip",
        sites_per_well=args.max_sites_per_well,
        progress=not args.no_progress,
    )
    if not os.path.exists(args.data_root):
        raise FileNotFoundError(f"--data-root {args.data_root}: no such file or folder")
    path = run_profiles(
        featuriser,
        PlateSource(args.data_root, channels="fluo"),
        args.out,
        args.plates,
        shard=args.shard,
        metadata=args.metadata,
        merge=args.merge,
        merge_only=args.merge_only,
        submission=args.submission,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main, prog="python -m dinov2_cell.profiles.cellprofiler"))
