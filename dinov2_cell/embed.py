"""Well profiles from trained teachers: ``python -m dinov2_cell.embed`` (paper Sec. 3.3).

A thin command line over the profiling driver (:mod:`dinov2_cell.profiles.driver`) with the SSL featuriser
(:mod:`dinov2_cell.profiles.ssl`, where the pipeline is described): per site ``concat(CLS, mean patch token)`` of
each teacher, sites merged per well on the 3x3 grid, fluorescent + brightfield concatenated.

Outputs under ``--out``: ``parts/<plate>.parquet`` (one per plate, written atomically, skipped when present: the run
resumes, and SLURM array tasks can each take ``--plates`` or ``--shard I/N`` with ``--no-merge``), ``run_config.json``
(the options that define the parts; a different later call on the folder is refused unless ``--overwrite``), and
after the merge step ``profiles.parquet`` plus the challenge ``submission.csv``. With ``--align-alpha A`` (off by
default) the merge also writes ``profiles_aligned_alpha<A>.parquet`` and ``submission_aligned_alpha<A>.csv``
(cross-plate alignment, which USES PLATE-LAYOUT KNOWLEDGE; see :mod:`dinov2_cell.profiles.align`).

Every option is a field of :class:`~dinov2_cell.profiles.ssl.EmbedOptions`; the parser below is generated from it.

Example (fluorescent + brightfield runs, all plates found under the root)::

    python -m dinov2_cell.embed --fluo runs/fluo --bf runs/bf --data-root /data/cpg0000 --out profiles/ssl
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Mapping, Sequence

from dinov2_cell.cli import (
    HelpFormatter,
    UsageError,
    add_legacy_aliases,
    common_parser,
    data_parser,
    join_space_separated,
    output_parser,
    run_main,
    setup_logging,
    workers_parser,
)
from dinov2_cell.profiles.driver import DatasetFactory, PlateSource, run_profiles
from dinov2_cell.profiles.ssl import EmbedOptions, SSLFeaturiser, alignment_variants

logger = logging.getLogger("dinov2_cell.embed")

PROG = "python -m dinov2_cell.embed"


def parse_dataset_opts(opts: Sequence[str] | None) -> dict:
    """``["on_error=skip", ...]`` -> CPJUMP1Dataset keywords, converted as in a dataset string.

    Args:
        opts: ``KEY=VALUE`` strings.

    Returns:
        Keyword dict (empty when none).

    Raises:
        ValueError: malformed option or unknown key (named by the dataset registry).
    """
    if not opts:
        return {}
    bad = [o for o in opts if "=" not in o or ":" in o]
    if bad:
        raise ValueError(f"--dataset-opt must be KEY=VALUE without ':', got {bad}")
    from dinov2_cell.data.registry import parse_dataset_str

    parsed = parse_dataset_str("CPJUMP1:" + ":".join(opts))
    if parsed is None:
        raise ValueError("dataset CPJUMP1 is not registered")
    kwargs = dict(parsed[1])
    reserved = [k for k in ("root", "plates", "channels") if k in kwargs]
    if reserved:
        raise ValueError(f"--dataset-opt cannot set {reserved}: use --data-root, --plates, --channels")
    return kwargs


def load_teachers(options: EmbedOptions) -> list:
    """Load every checkpoint of ``options`` (names from the options, else the channel group; made unique).

    Args:
        options: the run's options.

    Returns:
        :class:`~dinov2_cell.models.teacher.TeacherModel` list, in the order given.
    """
    from dinov2_cell.models.teacher import load_teacher
    from dinov2_cell.profiles.ssl import default_device

    items = options.checkpoints
    if isinstance(items, (str, os.PathLike)):
        items = [os.fspath(items)]
    pairs = (
        [(str(k), os.fspath(v)) for k, v in items.items()] if isinstance(items, Mapping) else [(None, v) for v in items]
    )
    if not pairs:
        raise UsageError("give --checkpoint (or --fluo / --bf) unless --merge-only")
    unknown = [k for k in options.channels if k not in {n for n, _ in pairs}]
    if unknown:
        raise UsageError(f"--channels names unknown checkpoint(s) {unknown}")
    # Check every path before the first (slow) model load, so a typo fails at once.
    for _, path in pairs:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such checkpoint or run directory: {path!r}")
    device = default_device(options.device)
    models = [
        load_teacher(path, name=name, channels=options.channels.get(name), image_size=options.image_size, device=device)
        for name, path in pairs
    ]
    seen: dict[str, int] = {}
    for m in models:
        seen[m.name] = seen.get(m.name, 0) + 1
        if seen[m.name] > 1:
            m.name = f"{m.name}{seen[m.name]}"
    return models


def embed(options: EmbedOptions, dataset_factory: DatasetFactory | None = None) -> str:
    """Run an embedding (see module docstring).

    Args:
        options: the run's options.
        dataset_factory: ``f(root, plates, channels, **kw) -> dataset`` (default: CPJUMP1Dataset).

    Returns:
        Path of the merged profiles (the aligned one when ``align_alpha`` is set), or of the parts folder when no
        merge was run.
    """
    if not options.out:
        raise UsageError("--out is required")
    variants = alignment_variants(options.align_alpha, options.align_by)
    common = dict(
        plates=options.plates,
        metadata=options.metadata,
        submission=options.submission,
        variants=variants,
        overwrite=options.overwrite,
        progress=options.progress,
    )
    if options.merge_only:
        return run_profiles(None, None, options.out, merge_only=True, **common)
    if not options.data_root:
        raise UsageError("--data-root is required unless --merge-only")
    models = load_teachers(options)
    source = PlateSource(
        options.data_root, models[0].channels, parse_dataset_opts(options.dataset_opt), dataset_factory
    )
    featuriser = SSLFeaturiser(models, options)
    return run_profiles(featuriser, source, options.out, shard=options.shard, merge=options.merge, **common)


def embed_plates(
    checkpoints: Mapping[str, str] | Sequence[str] | str,
    data_root: str | None,
    out_dir: str,
    plates: Sequence[str] | None = None,
    dataset_factory: DatasetFactory | None = None,
    **options,
) -> str:
    """Python shorthand for :func:`embed`: ``embed_plates({"fluo": run1, "bf": run2}, root, out, site_merge="mean")``.

    Args:
        checkpoints: ``{name: run folder or checkpoint}`` (names prefix the features), or a list (named by channel
            group).
        data_root: dataset root.
        out_dir: output folder.
        plates: barcodes (default: every plate under the root).
        dataset_factory: dataset builder (default: CPJUMP1Dataset).
        **options: any other :class:`~dinov2_cell.profiles.ssl.EmbedOptions` field.

    Returns:
        What :func:`embed` returns.
    """
    opts = EmbedOptions(checkpoints=checkpoints, data_root=data_root, out=out_dir, plates=plates, **options)
    return embed(opts, dataset_factory)


# --------------------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m dinov2_cell.embed``, generated from :class:`EmbedOptions`."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Well profiles from trained teacher checkpoints: per site concat(CLS, mean patch token), sites "
        "merged per well (4x4 -> 3x3 grid), fluorescent + brightfield concatenated; per-plate resumable parts, then "
        "profiles.parquet and the challenge submission.csv.",
        formatter_class=HelpFormatter,
        parents=[
            data_parser(required=False),
            output_parser(help="output folder (parts/, run_config.json, profiles.parquet, submission.csv)"),
            workers_parser(),
            common_parser(),
        ],
    )
    g = p.add_argument_group("checkpoints")
    g.add_argument(
        "--checkpoint",
        action="append",
        metavar="[NAME=]PATH",
        help="training output dir or eval/<name>/teacher_checkpoint.pth; repeat for fluorescent and brightfield; "
        "NAME (default: the channel group) prefixes the feature columns",
    )
    g.add_argument("--fluo", metavar="PATH", help="fluorescent run/checkpoint (= --checkpoint fluo=PATH)")
    g.add_argument("--bf", metavar="PATH", help="brightfield run/checkpoint (= --checkpoint bf=PATH)")
    g.add_argument(
        "--channels",
        action="append",
        metavar="NAME=SPEC",
        help="channel spec of a named checkpoint (fluo, bf, all or channel names); default from its config",
    )
    g = p.add_argument_group("embedding")
    for f in dataclasses.fields(EmbedOptions):
        meta = dict(f.metadata)
        flag = meta.pop("flag", True)
        meta.pop("record")
        if flag is False:
            continue
        # Flags left out of the command line leave no attribute (SUPPRESS), so the field's own default applies.
        if isinstance(flag, str):  # a negated boolean, e.g. --no-merge sets merge=False
            g.add_argument(flag, dest=f.name, action="store_false", default=argparse.SUPPRESS, help=meta["help"])
            continue
        default = argparse.SUPPRESS if callable(f.default_factory) else f.default
        g.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default, **meta)
    add_legacy_aliases(p, root=True, workers=True)
    return p


def _named(values: Sequence[str], flag: str) -> dict:
    out = {}
    for v in values:
        head, sep, tail = v.partition("=")
        if not sep or not head or "/" in head or os.sep in head:
            raise UsageError(f"{flag} {v!r}: expected NAME=VALUE")
        out[head] = tail
    return out


def options_from_args(args: argparse.Namespace) -> EmbedOptions:
    """The :class:`EmbedOptions` of a parsed command line.

    Args:
        args: output of :func:`build_parser`.

    Returns:
        The options.
    """
    given = list(args.checkpoint or []) + [f"{n}={p}" for n, p in (("fluo", args.fluo), ("bf", args.bf)) if p]
    named = [g for g in given if "=" in g and "/" not in g.partition("=")[0]]
    if named and len(named) != len(given):
        raise UsageError("--checkpoint: name all checkpoints (NAME=PATH) or none")
    checkpoints: object = _named(given, "--checkpoint") if named else given
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(EmbedOptions) if hasattr(args, f.name)}
    values.update(
        checkpoints=checkpoints, channels=_named(args.channels or [], "--channels"), progress=not args.no_progress
    )
    return EmbedOptions(**values)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (the error policy is :func:`dinov2_cell.cli.run_main`'s).

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    argv = join_space_separated(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    print(embed(options_from_args(args)))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog=PROG))
