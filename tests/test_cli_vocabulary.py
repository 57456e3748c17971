"""One vocabulary: every parser of every command-line entry point is walked, and one flag name has one meaning.

A flag's meaning is read off its parser: the action (store, store_true, append, ...), the value type, the choices and
``nargs``. Two commands may only spell a flag alike when these agree, or when the difference is listed below with its
reason. Hidden (``help=SUPPRESS``) flags are old spellings: each must write the same destination as a visible flag of
its parser, so it is an alias and never a second meaning.
"""

import argparse
import importlib
import pkgutil

import pytest

import dinov2_cell

# flag -> (commands whose signature may differ from the others, reason).
ALLOWED_DIFFERENCES = {
    "--wells": (
        {"demo"},
        "the demo takes a well count only; the generator also takes 'all' or a list of wells",
    ),
    "--illum": (
        {"prepare"},
        "prepare can also copy illumination functions only when present (auto); synthetic writes them or not",
    ),
    "--channels": (
        {"embed"},
        "the same channel spec (fluo, bf, all or names), given per named checkpoint as NAME=SPEC because embed runs "
        "several models",
    ),
    "--normalize": (
        {"cellprofiler"},
        "CellProfiler profiles are always normalised (the JUMP recipe) and have more features than DMSO wells, so the "
        "driver offers neither 'none' nor 'spherize'",
    ),
}


def _parsers():
    found = {}
    for info in pkgutil.walk_packages(dinov2_cell.__path__, "dinov2_cell."):
        if ".tests" in info.name:
            continue
        module = importlib.import_module(info.name)
        for attr in ("build_parser", "get_args_parser"):
            factory = getattr(module, attr, None)
            if callable(factory) and getattr(factory, "__module__", None) == module.__name__:
                name = info.name.split(".")[-1]
                name = info.name.split(".")[-2] if name == "__main__" else name
                if info.name == "dinov2_cell.train.config":
                    continue  # the parent of run.train's parser, walked there
                found[name] = factory()
    return found


PARSERS = _parsers()


def _signature(action: argparse.Action):
    kind = type(action).__name__
    value_type = getattr(action.type, "__name__", repr(action.type)) if action.type is not None else "str"
    if kind in ("_StoreTrueAction", "_StoreFalseAction", "_HelpAction", "_VersionAction", "_CountAction"):
        value_type = None
    choices = tuple(action.choices) if action.choices is not None else None
    return kind, value_type, choices, action.nargs


def _visible_flags():
    flags = {}
    for command, parser in PARSERS.items():
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for option in action.option_strings:
                flags.setdefault(option, {})[command] = _signature(action)
    return flags


def test_every_cli_parser_is_walked():
    expected = {"train", "embed", "knn_wells", "validate_submission", "cellprofiler", "baseline", "synthetic"}
    expected |= {"prepare", "demo"}
    assert expected <= set(PARSERS), f"parsers not found: {expected - set(PARSERS)}"


@pytest.mark.parametrize("flag", sorted(_visible_flags()))
def test_one_flag_one_meaning(flag):
    by_command = _visible_flags()[flag]
    allowed, _reason = ALLOWED_DIFFERENCES.get(flag, (set(), ""))
    signatures = {sig for command, sig in by_command.items() if command not in allowed}
    assert len(signatures) <= 1, f"{flag} means different things: {by_command}"


def test_allowed_differences_are_real():
    # An entry that no longer differs must be dropped, so the list stays a list of exceptions.
    flags = _visible_flags()
    for flag, (commands, _reason) in ALLOWED_DIFFERENCES.items():
        assert flag in flags, f"{flag} is in no parser any more"
        assert commands <= set(flags[flag]), f"{flag}: {commands - set(flags[flag])} do not have it"
        assert len(set(flags[flag].values())) > 1, f"{flag} means the same everywhere now; drop the exception"


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_hidden_flags_are_aliases(command):
    parser = PARSERS[command]
    visible = {a.dest for a in parser._actions if a.help != argparse.SUPPRESS}
    for action in parser._actions:
        if action.help == argparse.SUPPRESS and action.option_strings:
            assert (
                action.dest in visible
            ), f"{command}: hidden {action.option_strings} writes {action.dest!r}, which no visible flag does"


def test_known_collisions_resolved():
    flags = _visible_flags()
    # A fraction in the generator and a policy in embed were both --missing-sites.
    assert set(flags["--missing-sites"]) == {"embed"}
    # A grid layout in embed and "the first N sites" in cellprofiler were both --sites-per-well.
    assert set(flags["--sites-per-well"]) == {"embed"}
    # One error-policy flag, one set of values, as the data layer's on_error.
    assert "--on-bad-site" not in flags
    assert {sig[2] for sig in flags["--on-error"].values()} == {("raise", "skip")}
    # Every command writes to --out.
    assert "--output-dir" not in flags
    assert "train" in flags["--out"]


def test_old_spellings_still_parse_to_the_new_meaning():
    cp = PARSERS["cellprofiler"]
    base = ["--data-root", "d", "--out", "o"]
    assert cp.parse_args(base + ["--on-bad-site", "error"]).on_error == "raise"
    assert cp.parse_args(base + ["--on-bad-site", "skip"]).on_error == "skip"
    assert cp.parse_args(base).on_error == "skip"
    assert cp.parse_args(base + ["--sites-per-well", "3"]).max_sites_per_well == 3
    assert PARSERS["train"].parse_args(["--output-dir", "runs/a"]).output_dir == "runs/a"
    assert PARSERS["train"].parse_args(["--out", "runs/b"]).output_dir == "runs/b"
    assert PARSERS["knn_wells"].parse_args(["p.parquet", "--no-feature-select"]).feature_select is False


@pytest.mark.parametrize("command", ["prepare", "baseline", "cellprofiler"])
def test_required_data_root_is_shown_as_required(command):
    parser = PARSERS[command]
    assert "--data-root DIR" in parser.format_usage() and "[--data-root DIR]" not in parser.format_usage()
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "o"])


def test_old_root_spelling_is_rewritten_before_parsing():
    from dinov2_cell.cli import rename_flags

    renames = {"--root": "--data-root"}
    assert rename_flags(["--root", "d", "--out", "o"], renames) == ["--data-root", "d", "--out", "o"]
    assert rename_flags(["--root=d", "--rooted", "x"], renames) == ["--data-root=d", "--rooted", "x"]
