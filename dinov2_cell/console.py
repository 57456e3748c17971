"""The `dinov2-cell` console command: one entry point whose subcommands are the `python -m` modules.

`dinov2-cell COMMAND ARGS...` runs exactly what `python -m MODULE ARGS...` runs (the module is executed as
`__main__`), so options, help, errors and exit status are the module's own; `dinov2-cell COMMAND --help` prints the
module's help. `dinov2-cell --help` lists the commands. Installed by setup.py (`console_scripts`); without the script,
`python -m dinov2_cell.console COMMAND ...` does the same.

This module imports only the standard library: `dinov2-cell --help` is instant.
"""

from __future__ import annotations

import runpy
import sys
import warnings
from typing import Sequence

PROG = "dinov2-cell"

# command -> (module run as `python -m`, one line of help). A command is named after its module; a `-` spelling
# (`knn-wells`) is accepted too.
COMMANDS: dict[str, tuple[str, str]] = {
    "synthetic": ("dinov2_cell.synthetic", "write synthetic CPJUMP1-like plates"),
    "prepare": ("dinov2_cell.data.prepare", "plates -> a prepared, memory-mappable store"),
    "train": ("dinov2_cell.run.train", "train (local, torchrun or SLURM); --check first"),
    "embed": ("dinov2_cell.embed", "well profiles from trained teachers"),
    "cellprofiler": ("dinov2_cell.profiles.cellprofiler", "CellProfiler features and the JUMP recipe"),
    "baseline": ("dinov2_cell.profiles.baseline", "classical intensity and texture profiles"),
    "knn_wells": ("dinov2_cell.eval.knn_wells", "kNN compound classification and mAP of profiles"),
    "write_submission": ("dinov2_cell.profiles.write_submission", "a challenge submission CSV from profiles"),
    "validate_submission": ("dinov2_cell.profiles.validate_submission", "check a challenge submission CSV"),
    "report": ("dinov2_cell.report", "curves of a training run (loss, health, probe)"),
    "demo": ("dinov2_cell.demo", "the end-to-end demo on synthetic plates"),
}


def usage() -> str:
    """The text of `dinov2-cell --help`.

    Returns:
        The usage line, the commands with their modules and help, and how to get a command's help.
    """
    width = max(len(c) for c in COMMANDS)
    mwidth = max(len(m) for m, _ in COMMANDS.values())
    lines = [
        f"usage: {PROG} COMMAND [ARGS...]",
        "",
        "Local-aggregation DINOv2 for Cell Painting profiling. Each command runs a `python -m` module with the same",
        "arguments, help and exit status.",
        "",
        f"  {'command':<{width}}  {'runs python -m':<{mwidth}}  what it does",
    ]
    lines += [f"  {name:<{width}}  {module:<{mwidth}}  {text}" for name, (module, text) in COMMANDS.items()]
    lines += ["", f"`{PROG} COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def module_of(command: str) -> str:
    """The module a command runs.

    Args:
        command: a command name (`knn_wells` or `knn-wells`).

    Returns:
        The module's dotted name.

    Raises:
        KeyError: unknown command (the message lists the commands).
    """
    name = command.replace("-", "_")
    if name not in COMMANDS:
        raise KeyError(f"unknown command {command!r}; commands: {', '.join(COMMANDS)} (see {PROG} --help)")
    return COMMANDS[name][0]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `dinov2-cell COMMAND ARGS...` as `python -m MODULE ARGS...`.

    Args:
        argv: the arguments after the program name (default `sys.argv[1:]`).

    Returns:
        The command's exit status (0 for `--help`; 2 for no or an unknown command, with one `error:` line for an
        unknown one).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    try:
        module = module_of(argv[0])
    except KeyError as e:
        print(f"{PROG}: error: {e.args[0]}", file=sys.stderr)
        return 2
    saved = sys.argv[:]
    sys.argv = [f"{PROG} {argv[0]}", *argv[1:]]  # what the module's parser reads; runpy sets argv[0] to its file
    try:
        with warnings.catch_warnings():
            # runpy warns when the module was imported before (the in-process case: tests, notebooks); harmless here
            warnings.filterwarnings("ignore", message=r".*found in sys\.modules.*", category=RuntimeWarning)
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:  # the modules end with sys.exit(status)
        if isinstance(e.code, str):  # sys.exit("message"): printed, status 1, as the interpreter does
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
