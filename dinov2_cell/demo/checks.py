"""The demo's checks of its options, made before anything is written."""

from __future__ import annotations

import os

SIZE_RANGE = (16, 4096)  # the synthetic generator's site sizes


def validate(args) -> list[str]:
    """Check every option that would otherwise fail after files were written; nothing is created here.

    Args:
        args: parsed options.

    Returns:
        The plate barcodes the demo will generate.

    Raises:
        UsageError: the first bad option, named, with what would be accepted.
    """
    from dinov2_cell.cli import UsageError
    from dinov2_cell.data import metadata as md
    from dinov2_cell.demo.steps import plate_request
    from dinov2_cell.eval.postprocess import parse_block_weights
    from dinov2_cell.synthetic import default_plates, select_wells

    if args.block_weights != "raw":
        try:
            parse_block_weights(args.block_weights)
        except ValueError as e:
            raise UsageError(f"--block-weights: {e}") from None
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    request = plate_request(args.plates)
    known = md.compound_plates()
    if isinstance(request, int):
        try:
            plates = default_plates(request)
        except ValueError as e:
            raise UsageError(str(e) if "--plates" in str(e) else f"--plates {request}: {e}") from None
    else:
        bad = [p for p in request if p not in known]
        if bad:
            raise UsageError(f"--plates: not compound plates of CPJUMP1: {bad}; choose among {', '.join(known)}")
        plates = list(dict.fromkeys(request))
    lines = md.plate_cell_lines(plates)
    per_line = {line: sum(1 for p in plates if lines[p] == line) for line in sorted(set(lines.values()))}
    if max(per_line.values(), default=0) < 2:
        raise UsageError(
            f"--plates {','.join(plates)}: the kNN protocol's plate-wise folds need >= 2 plates of one cell line "
            f"(plates per cell line: {per_line})"
        )
    try:
        select_wells(args.wells)
    except ValueError as e:
        raise UsageError(f"--wells {args.wells}: {e}") from None
    if not SIZE_RANGE[0] <= args.size <= SIZE_RANGE[1]:
        raise UsageError(f"--size {args.size}: must be in {SIZE_RANGE[0]}..{SIZE_RANGE[1]} pixels")
    return plates
