"""Config building in upstream's style, with the plugin default in the merge chain.

Merge order: upstream `ssl_default_config.yaml` -> `dinov2_cell/configs/cell_default_config.yaml` -> experiment file
-> command-line `key=value`. The merged defaults are in struct mode, so a key that exists in neither default (a typo)
is an error that names the key and where it came from.
"""

from __future__ import annotations

import os
import tempfile
from importlib import resources

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

PLUGIN_DEFAULT_CONFIG = "cell_default_config.yaml"
# Entries of an output dir that do not make it "used": submitit's logs are written before the job starts.
IGNORED_ENTRIES = ("submitit",)
# Values derived at run time (never compared when deciding whether an output dir holds the same run).
DERIVED_KEYS = ("optim.lr", "train.output_dir")


def plugin_default_config() -> DictConfig:
    """The plugin defaults file shipped inside the package."""
    with resources.files("dinov2_cell").joinpath("configs", PLUGIN_DEFAULT_CONFIG).open("r") as f:
        return OmegaConf.load(f)


def default_config() -> DictConfig:
    """Upstream default merged with the plugin default, in struct mode (unknown keys are errors)."""
    from dinov2.configs import dinov2_default_config

    cfg = OmegaConf.merge(OmegaConf.create(dinov2_default_config), plugin_default_config())
    OmegaConf.set_struct(cfg, True)
    return cfg


def build_config(config_file: str | None = None, opts: list[str] | None = None) -> DictConfig:
    """Merges defaults, an experiment file and `key=value` overrides.

    Args:
        config_file: experiment yaml (overrides only), or None.
        opts: command-line overrides such as `optim.epochs=2`.

    Raises:
        ValueError: an unknown key (named with its source) or an unreadable file.
    """
    cfg = default_config()
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"--config-file: no such file {config_file!r}")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(config_file))
        except (ConfigKeyError, ConfigAttributeError) as e:
            raise ValueError(f"{config_file}: unknown config key {e.full_key!r} (not in upstream or plugin defaults)")
    if opts:
        bad = [o for o in opts if "=" not in o]
        if bad:
            raise ValueError(f"command-line overrides must be key=value, got {bad}")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(opts)))
        except (ConfigKeyError, ConfigAttributeError) as e:
            raise ValueError(f"command line: unknown config key {e.full_key!r} (not in upstream or plugin defaults)")
    return cfg


def _comparable(cfg: DictConfig) -> dict:
    c = OmegaConf.to_container(cfg, resolve=True)
    for dotted in DERIVED_KEYS:
        section, key = dotted.split(".")
        c.get(section, {}).pop(key, None)
    return c


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def check_output_dir(cfg: DictConfig, output_dir: str) -> bool:
    """Refuses a non-empty output dir unless it holds a resumable run of the same config.

    Returns:
        True when the directory holds a previous run of the same config (resume), False when it is new or empty.

    Raises:
        FileExistsError: naming the directory and the config keys that differ.
    """
    if not os.path.isdir(output_dir) or not [e for e in os.listdir(output_dir) if e not in IGNORED_ENTRIES]:
        return False
    saved_path = os.path.join(output_dir, "config.yaml")
    if not os.path.isfile(saved_path):
        raise FileExistsError(
            f"output dir {output_dir!r} is not empty and holds no config.yaml of an earlier run; "
            "choose a new --output-dir (nothing there was touched)"
        )
    saved = OmegaConf.load(saved_path)
    differing = _diff(_comparable(saved), _comparable(cfg))
    if differing:
        raise FileExistsError(
            f"output dir {output_dir!r} holds a run with a different config (keys: {', '.join(differing[:10])}); "
            "resume with the same config or choose a new --output-dir"
        )
    return True


def write_config(cfg: DictConfig, output_dir: str, name: str = "config.yaml") -> str:
    """Writes the resolved config atomically (temp file + rename) and returns its path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, name)
    fd, tmp = tempfile.mkstemp(dir=output_dir, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(OmegaConf.to_yaml(cfg))
    os.replace(tmp, path)
    return path
