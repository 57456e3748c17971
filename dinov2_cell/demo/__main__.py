"""``python -m dinov2_cell.demo`` (``make demo``): options checked before anything is written, then the demo."""

from __future__ import annotations

import logging
import sys
import time


def main(argv=None) -> int:
    """CLI entry: parse, check every option, then run the demo."""
    from dinov2_cell.cli import setup_logging
    from dinov2_cell.demo.options import get_args_parser, validate
    from dinov2_cell.demo.pipeline import run_demo

    args = get_args_parser().parse_args(argv)
    validate(args)  # a bad option leaves no trace: nothing under --out exists before this passes
    setup_logging(args.debug)
    logging.getLogger("copairs").setLevel(logging.WARNING)  # per-step INFO lines drown the demo's own
    t0 = time.time()
    run_demo(args)
    print(f"demo finished in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    from dinov2_cell.cli import run_main

    sys.exit(run_main(main, prog="python -m dinov2_cell.demo"))
