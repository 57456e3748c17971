"""Config building in upstream's style, with the plugin default in the merge chain.

Merge order: upstream `ssl_default_config.yaml` -> `configs/cell_default_config.yaml` -> experiment file ->
command-line `key=value`. The merged defaults are in struct mode, so a key that exists in neither default (a typo)
is an error that names the key and where it came from.

The top-level `configs/` folder is installed as `dinov2_cell/configs/` (setup.py `package_dir`), so an experiment is
addressable by name (`cpjump1_vits14_fluo`) from any directory, as well as by path.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

PLUGIN_DEFAULT_CONFIG = "cell_default_config.yaml"
CONFIGS_PACKAGE = "dinov2_cell.configs"
# Entries of an output dir that do not make it "used": submitit's logs are written before the job starts.
IGNORED_ENTRIES = ("submitit",)
# Values derived at run time (never compared when deciding whether an output dir holds the same run).
DERIVED_KEYS = ("optim.lr", "train.output_dir")


def configs_dir() -> str:
    """The folder holding the plugin default and the experiment configs.

    The installed package's `dinov2_cell/configs/` (setup.py maps the top-level `configs/` there); in a source
    checkout without that mapping (on PYTHONPATH, or an editable install made before the mapping existed), the
    `configs/` folder beside the package.

    Returns:
        The folder's path.

    Raises:
        FileNotFoundError: neither exists.
    """
    spec = importlib.util.find_spec(CONFIGS_PACKAGE)
    candidates = list(spec.submodule_search_locations or []) if spec is not None else []
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../dinov2_cell
    candidates.append(os.path.join(os.path.dirname(package_dir), "configs"))
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, PLUGIN_DEFAULT_CONFIG)):
            return folder
    raise FileNotFoundError(f"no configs folder with {PLUGIN_DEFAULT_CONFIG} (looked in {', '.join(candidates)})")


def available_configs() -> list[str]:
    """Names of the packaged experiment configs (file names without `.yaml`), sorted.

    Returns:
        The names, e.g. `["cpjump1_vitb14_bf", ..., "tiny_cpu_fluo"]`.
    """
    return sorted(
        f[: -len(".yaml")] for f in os.listdir(configs_dir()) if f.endswith(".yaml") and f != PLUGIN_DEFAULT_CONFIG
    )


def resolve_config_file(config_file: str) -> str:
    """Resolves `--config-file` given as a path or as the name of a packaged config.

    An existing file wins. Otherwise a bare name (`cpjump1_vits14_fluo`, with or without `.yaml`) or a path into the
    repository's `configs/` folder (`configs/cpjump1_vits14_fluo.yaml`, from any directory) names a packaged config.

    Args:
        config_file: the value given.

    Returns:
        The path of the file to load.

    Raises:
        FileNotFoundError: no such file and no packaged config of that name; the message lists the available names.
    """
    if os.path.isfile(config_file):
        return config_file
    head, tail = os.path.split(os.path.normpath(config_file))
    if head in ("", "configs"):
        name = tail[: -len(".yaml")] if tail.endswith(".yaml") else tail
        if name in available_configs():
            return os.path.join(configs_dir(), name + ".yaml")
    raise FileNotFoundError(
        f"--config-file: no such file or packaged config {config_file!r}; packaged configs: "
        + ", ".join(available_configs())
    )


def plugin_default_config() -> DictConfig:
    """The plugin defaults file shipped inside the package."""
    return OmegaConf.load(os.path.join(configs_dir(), PLUGIN_DEFAULT_CONFIG))


def default_config() -> DictConfig:
    """Upstream default merged with the plugin default, in struct mode (unknown keys are errors)."""
    from dinov2.configs import dinov2_default_config

    cfg = OmegaConf.merge(OmegaConf.create(dinov2_default_config), plugin_default_config())
    OmegaConf.set_struct(cfg, True)
    return cfg


def build_config(config_file: str | None = None, opts: list[str] | None = None) -> DictConfig:
    """Merges defaults, an experiment file and `key=value` overrides.

    Args:
        config_file: experiment yaml (overrides only) as a path or a packaged config's name, or None.
        opts: command-line overrides such as `optim.epochs=2`.

    Raises:
        FileNotFoundError: no such config file or name (the message lists the packaged configs).
        ValueError: an unknown key (named with its source) or an unreadable file.
    """
    cfg = default_config()
    if config_file:
        config_file = resolve_config_file(config_file)
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


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Arguments of the training main (the parent of `python -m dinov2_cell.run.train`'s parser).

    Args:
        add_help: add `-h/--help` (False when used as a parent parser).

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser("dinov2_cell training", add_help=add_help)
    parser.add_argument(
        "--config-file",
        default="",
        metavar="NAME|FILE",
        help="experiment config: a packaged config's name (e.g. cpjump1_vits14_fluo) or a yaml file (overrides only)",
    )
    parser.add_argument(
        "--output-dir",
        "--output_dir",
        default="",
        help="where logs, config.yaml, checkpoints and eval/*/teacher_checkpoint.pth go (default: ./output)",
    )
    parser.add_argument("--no-resume", action="store_true", help="do not resume from checkpoints in --output-dir")
    parser.add_argument("--seed", type=int, default=0, help="random seed (each rank adds its rank)")
    parser.add_argument("opts", nargs="*", default=[], help="config overrides, key=value ... (anywhere on the line)")
    return parser


def prepare_config(args: argparse.Namespace) -> DictConfig:
    """Builds the config and checks the output dir; writes nothing (bad input fails before any file exists).

    Args:
        args: parsed training arguments (`config_file`, `output_dir`, `opts`, `no_resume`); `output_dir` is made
            absolute (default `./output`).

    Returns:
        The merged config, with `train.output_dir` set.

    Raises:
        FileNotFoundError: no such config file or name.
        ValueError: an unknown config key.
        FileExistsError: the output dir holds something other than a resumable run of this config.
    """
    args.output_dir = os.path.abspath(args.output_dir or "output")
    opts = list(args.opts or []) + [f"train.output_dir={args.output_dir}"]
    cfg = build_config(args.config_file, opts)
    # Only one process decides (others would race on the files rank 0 is creating).
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0:
        resuming = check_output_dir(cfg, args.output_dir)
        if resuming and args.no_resume:
            raise FileExistsError(f"--no-resume with an output dir that already holds this run: {args.output_dir}")
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
