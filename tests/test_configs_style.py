"""The yaml configs stay short and explained: lines fit in 120 characters, comments in 110 (measurement logs belong in
docs/training.md), every file loads, and every value a tiny config changes from the merged defaults (upstream
ssl_default_config.yaml + cell_default_config.yaml) carries a comment on the line where its key is written."""

import glob
import os

import pytest
import yaml
from omegaconf import OmegaConf

from dinov2_cell.train.config import default_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
TINY = [os.path.join(REPO, "configs", name) for name in ("tiny_cpu_fluo.yaml", "tiny_cpu_bf.yaml")]


def _comment(line):
    """The comment of a yaml line (text after a full-line `#` or after ` # `), or None."""
    stripped = line.lstrip()
    if stripped.startswith("#"):
        return stripped[1:].strip()
    if " # " in line:
        return line.split(" # ", 1)[1].strip()
    return None


def _leaf_lines(node, path=()):
    """(dotted key path, 0-based line of the leaf's key) for every scalar leaf of a composed yaml mapping.

    An alias is composed as its anchor's node, so the leaves it brings have the lines where the anchor writes them.
    """
    for key, value in node.value:
        here = path + (key.value,)
        if isinstance(value, yaml.MappingNode):
            yield from _leaf_lines(value, here)
        else:
            yield ".".join(here), key.start_mark.line


def _uncommented_deviations(text, defaults):
    """Keys of `text` whose value differs from `defaults` (a plain dict) and whose key line has no comment.

    Returns:
        (uncommented keys, number of deviating keys).
    """
    loaded = OmegaConf.to_container(OmegaConf.create(text))
    lines = text.splitlines()
    missing, deviating = [], 0
    for key, line in _leaf_lines(yaml.compose(text, Loader=yaml.SafeLoader)):
        value, default = loaded, defaults
        for part in key.split("."):
            value, default = value[part], default.get(part) if isinstance(default, dict) else None
        if value != default:
            deviating += 1
            if not _comment(lines[line]):
                missing.append(key)
    return missing, deviating


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_lines_and_comments_are_short(path):
    too_long = []
    for number, line in enumerate(open(path).read().splitlines(), 1):
        comment = _comment(line)
        if len(line) > 120 or (comment is not None and len(comment) > 110):
            too_long.append(f"line {number}: {len(line)} characters, comment {len(comment or '')}")
    assert not too_long, f"{os.path.basename(path)}: {too_long} (measurements go to docs/training.md)"


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_loads(path):
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(cfg, dict) and cfg


def test_the_deviation_check_finds_an_uncommented_key():
    defaults = {"a": {"b": 1, "c": {"d": "x", "e": "y"}}, "f": 2}
    text = "a:\n  b: 3  # why\n  c: {d: z, e: y}\nf: 2\n"
    assert _uncommented_deviations(text, defaults) == (["a.c.d"], 2)
    text = "a:\n  b: 3\n  c: &v {d: z, e: y}  # why\nf: 2\n"
    assert _uncommented_deviations(text, defaults) == (["a.b"], 2)
    # through an alias, a leaf counts as written (and commented) where its anchor writes it
    defaults = {"p": {"q": {"r": 1}, "s": {"r": 1}}}
    commented = "p:\n  q: &v\n    r: 2  # why\n  s: *v\n"
    assert _uncommented_deviations(commented, defaults) == ([], 2)
    assert _uncommented_deviations(commented.replace("  # why", ""), defaults) == (["p.q.r", "p.s.r"], 2)


@pytest.mark.parametrize("path", TINY, ids=os.path.basename)
def test_every_deviation_of_a_tiny_config_is_commented(path):
    defaults = OmegaConf.to_container(default_config())
    missing, deviating = _uncommented_deviations(open(path).read(), defaults)
    assert deviating >= 40  # the tiny configs change the model, head, schedules, crops and precision
    assert not missing, f"{os.path.basename(path)}: no reason given on the line of {missing}"
