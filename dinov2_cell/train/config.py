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
import re
import tempfile

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, InterpolationResolutionError

PLUGIN_DEFAULT_CONFIG = "cell_default_config.yaml"
CONFIGS_PACKAGE = "dinov2_cell.configs"
# Entries of an output dir that do not make it "used": submitit's logs are written before the job starts.
IGNORED_ENTRIES = ("submitit",)
# Values derived at run time (never compared when deciding whether an output dir holds the same run).
DERIVED_KEYS = ("optim.lr", "train.output_dir")
# Derived from train.batch_size_total and the world size when the total is set (see `per_gpu_batch_size`).
PER_GPU_KEY = "train.batch_size_per_gpu"
TOTAL_KEY = "train.batch_size_total"
DATASET_KEY = "train.dataset_path"
# Warm-ups upstream's `build_schedulers` lays out over the run, in epochs: each must fit in `optim.epochs`. The lr
# warm-up longer than the run fails upstream's CosineScheduler assertion; the other two would silently never end (the
# teacher temperature never reaches `teacher.teacher_temp`, the last layer never trains).
WARMUP_KEYS = ("optim.warmup_epochs", "teacher.warmup_teacher_temp_epochs", "optim.freeze_last_layer_epochs")
_ENV_INTERPOLATION = re.compile(r"\$\{oc\.env:([^,}]+)")


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
        "--out",
        dest="output_dir",
        default="",
        metavar="DIR",
        help="run folder: logs, config.yaml, checkpoints and eval/*/teacher_checkpoint.pth (default: ./output)",
    )
    # Upstream's spelling, kept hidden for one release: every other command writes to --out.
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", help=argparse.SUPPRESS)
    parser.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="dataset root: sets root= of train.dataset_path (instead of the paper configs' $CPJUMP1_ROOT); Cell "
        "Painting Gallery layout (LoadData CSVs / Phenix folders) or a prepared store",
    )
    parser.add_argument("--no-resume", action="store_true", help="do not resume from checkpoints in --out")
    parser.add_argument("--seed", type=int, default=0, help="random seed (each rank adds its rank)")
    parser.add_argument("opts", nargs="*", default=[], help="config overrides, key=value ... (anywhere on the line)")
    return parser


def prepare_config(args: argparse.Namespace) -> DictConfig:
    """Builds the config and checks it and the output dir; writes nothing (bad input fails before any file exists).

    Args:
        args: parsed training arguments (`config_file`, `output_dir`, `opts`, `no_resume`, `data_root`);
            `output_dir` (default `./output`) and `data_root` are made absolute.

    Returns:
        The merged config, with `train.output_dir` set.

    Raises:
        FileNotFoundError: no such config file or name.
        ValueError: an unknown config key; an unset environment variable the config reads (`CPJUMP1_ROOT`); a warm-up
            longer than the run; a `train.batch_size_total` the world size does not divide.
        FileExistsError: the output dir holds something other than a resumable run of this config.
    """
    args.output_dir = os.path.abspath(args.output_dir or "output")
    opts = list(args.opts or []) + [f"train.output_dir={args.output_dir}"]
    cfg = build_config(args.config_file, opts)
    if getattr(args, "data_root", None):
        args.data_root = os.path.abspath(args.data_root)  # a SLURM job may start in another directory
        set_dataset_root(cfg, args.data_root)
    check_schedules(cfg)
    check_batch_overrides(cfg, opts)
    per_gpu_batch_size(cfg, launch_world_size(args))  # a total the GPUs cannot share fails before anything is queued
    check_resolvable(cfg)  # the config's own rules first, then what it reads from the environment
    # Only one process decides (others would race on the files rank 0 is creating).
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0:
        resuming = check_output_dir(cfg, args.output_dir)
        if resuming and args.no_resume:
            raise FileExistsError(f"--no-resume with an output dir that already holds this run: {args.output_dir}")
    return cfg


def split_dataset_str(dataset_str: str) -> list[str]:
    """Splits a dataset string at the `:` between its tokens, not at those inside `${...}` interpolations.

    Args:
        dataset_str: e.g. `CPJUMP1:root=${oc.env:CPJUMP1_ROOT}:channels=fluo` (unresolved).

    Returns:
        The tokens, e.g. `["CPJUMP1", "root=${oc.env:CPJUMP1_ROOT}", "channels=fluo"]`.
    """
    tokens, current, depth = [], "", 0
    for i, ch in enumerate(dataset_str):
        if ch == "{" and i and dataset_str[i - 1] == "$":
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
        if ch == ":" and not depth:
            tokens.append(current)
            current = ""
        else:
            current += ch
    return tokens + [current]


def set_dataset_root(cfg: DictConfig, root: str) -> DictConfig:
    """`--data-root`: sets (or adds) the `root=` token of `train.dataset_path`, replacing e.g. `${oc.env:CPJUMP1_ROOT}`.

    The saved config then holds the path itself, so a resume does not depend on the environment.

    Args:
        cfg: the merged config, modified in place.
        root: the dataset root.

    Returns:
        The same config.

    Raises:
        ValueError: the root contains `:` (the dataset-string separator).
    """
    if ":" in root:
        raise ValueError(f"--data-root {root!r}: a path with ':' cannot go into {DATASET_KEY} (':' separates its keys)")
    raw = str(OmegaConf.to_container(cfg.train, resolve=False).get("dataset_path") or "")
    tokens = split_dataset_str(raw)
    keys = [t.split("=", 1)[0] for t in tokens]
    if "root" in keys[1:]:
        tokens[keys.index("root", 1)] = f"root={root}"
    else:
        tokens.insert(1, f"root={root}")
    cfg.train.dataset_path = ":".join(tokens)
    return cfg


def check_resolvable(cfg: DictConfig) -> None:
    """Resolves every interpolation once, so an unset variable is one message with its remedy, not OmegaConf's three.

    Args:
        cfg: the merged config.

    Raises:
        ValueError: naming the key and the unset variable; for `train.dataset_path` both remedies (`export
            CPJUMP1_ROOT=...` or `--data-root ...`).
    """
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as e:
        key = e.full_key or "?"
        parent, _, leaf = key.rpartition(".")
        try:
            node = OmegaConf.select(cfg, parent) if parent else cfg
            raw = str(OmegaConf.to_container(node, resolve=False).get(leaf, ""))
        except Exception:  # noqa: BLE001  (only used to improve the message)
            raw = ""
        unset = [v.strip() for v in _ENV_INTERPOLATION.findall(raw) if v.strip() not in os.environ]
        if not unset:
            raise ValueError(f"{key}: cannot resolve {raw or 'its value'!r}: {str(e).splitlines()[0]}") from None
        var = unset[0]
        if key == DATASET_KEY:
            raise ValueError(
                f"{key} reads its dataset root from the environment variable {var}, which is not set: "
                f"export {var}=/path/to/the/plates, or pass --data-root /path/to/the/plates"
            ) from None
        raise ValueError(f"{key} reads the environment variable {var}, which is not set: export {var}=...") from None


def check_schedules(cfg: DictConfig) -> None:
    """Refuses run lengths upstream's `build_schedulers` cannot lay out, naming the keys and the rule.

    The rule: `optim.epochs` >= 1, `train.OFFICIAL_EPOCH_LENGTH` >= 1, and every warm-up of `WARMUP_KEYS` is a whole
    number of epochs between 0 and `optim.epochs`. (A shortened paper config, `optim.epochs=1`, otherwise ends in a
    bare AssertionError from upstream's CosineScheduler: its lr warm-up is 10 epochs.)

    Args:
        cfg: the merged config.

    Raises:
        ValueError: one message naming every key that breaks the rule and how to fix it.
    """

    def value(dotted):
        return OmegaConf.select(cfg, dotted)

    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool)

    for key in ("optim.epochs", "train.OFFICIAL_EPOCH_LENGTH"):
        if not whole(value(key)) or value(key) < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value(key)!r}")
    epochs = value("optim.epochs")
    bad = [k for k in WARMUP_KEYS if not whole(value(k)) or value(k) < 0]
    if bad:
        raise ValueError(", ".join(f"{k}={value(k)!r}" for k in bad) + " must be whole numbers of epochs >= 0")
    longer = [k for k in WARMUP_KEYS if value(k) > epochs]
    if longer:
        fix = " ".join(f"{k}={min(value(k), max(epochs - 1, 0))}" for k in longer)
        raise ValueError(
            f"warm-up longer than the run: {', '.join(f'{k}={value(k)}' for k in longer)} > optim.epochs={epochs}; "
            f"each warm-up must be <= optim.epochs (upstream's schedules are laid out over optim.epochs epochs), "
            f"e.g. add {fix}"
        )


def launch_world_size(args: argparse.Namespace | None = None, environ=None) -> int:
    """The number of training processes the run will have, known before distributed mode is enabled.

    With `--slurm` (a SLURM backend): `--nodes` x `--gpus-per-node`; submitit's local/debug backends run one process.
    Otherwise the environment decides, as upstream's `dinov2.distributed.enable` reads it: inside a SLURM job
    `SLURM_NTASKS`, under torchrun `WORLD_SIZE`, else one process.

    Args:
        args: the parsed training arguments (`slurm`, `nodes`, `gpus_per_node`, `submitit_cluster` when present).
        environ: the environment (default `os.environ`).

    Returns:
        The world size.
    """
    environ = os.environ if environ is None else environ
    if args is not None and getattr(args, "slurm", False):
        if getattr(args, "submitit_cluster", None) in ("local", "debug"):
            return 1
        return int(args.nodes) * int(args.gpus_per_node)
    if "SLURM_JOB_ID" in environ:
        return int(environ.get("SLURM_NTASKS", 1))
    return int(environ.get("WORLD_SIZE", 1))


def per_gpu_batch_size(cfg: DictConfig, world_size: int) -> int:
    """The per-GPU batch of a run on `world_size` processes.

    `train.batch_size_total` (the paper configs: 128) fixes the total batch whatever the GPU count, so the lr that
    upstream's `sqrt_wrt_1024` rule derives from it stays the same too; null keeps upstream's behaviour
    (`train.batch_size_per_gpu` on every GPU, total = per-GPU x world size).

    Args:
        cfg: the merged config.
        world_size: number of training processes (one per GPU).

    Returns:
        The per-GPU batch size.

    Raises:
        ValueError: `train.batch_size_total` is not a positive integer, or the world size does not divide it.
    """
    total = cfg.train.get("batch_size_total")
    if total is None:
        return int(cfg.train.batch_size_per_gpu)
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ValueError(f"{TOTAL_KEY} must be a positive integer or null, got {total!r}")
    if total % world_size:
        raise ValueError(
            f"{TOTAL_KEY}={total} does not divide over {world_size} training processes (GPUs); use a GPU count that "
            f"divides {total}, set {TOTAL_KEY} to a multiple of {world_size}, or opt out with {TOTAL_KEY}=null "
            f"({PER_GPU_KEY}={cfg.train.batch_size_per_gpu} on every GPU)"
        )
    return total // world_size


def apply_batch_size_total(cfg: DictConfig, world_size: int) -> DictConfig:
    """Sets `train.batch_size_per_gpu` for `world_size` processes (before upstream's lr scaling rule reads it).

    Args:
        cfg: the merged config, modified in place.
        world_size: number of training processes.

    Returns:
        The same config.

    Raises:
        ValueError: as `per_gpu_batch_size`.
    """
    cfg.train.batch_size_per_gpu = per_gpu_batch_size(cfg, world_size)
    return cfg


def effective_batch_message(cfg: DictConfig, world_size: int) -> str:
    """One line with the effective total batch, the per-GPU batch and the lr (after upstream's scaling rule).

    Args:
        cfg: the config after `apply_batch_size_total` and upstream's `apply_scaling_rules_to_cfg`.
        world_size: number of training processes.

    Returns:
        E.g. `effective batch 128 = 8 processes (GPUs) x 16 (train.batch_size_total=128), lr 2e-05 (optim.base_lr
        5.657e-05, scaling rule sqrt_wrt_1024)`.
    """
    per_gpu = int(cfg.train.batch_size_per_gpu)
    total = cfg.train.get("batch_size_total")
    source = f"{TOTAL_KEY}={total}" if total is not None else f"{TOTAL_KEY}=null: {PER_GPU_KEY} on every GPU"
    return (
        f"effective batch {per_gpu * world_size} = {world_size} process{'es' if world_size != 1 else ''} (GPUs) x "
        f"{per_gpu} ({source}), lr {cfg.optim.lr:.4g} (optim.base_lr {cfg.optim.base_lr:.4g}, scaling rule "
        f"{cfg.optim.scaling_rule})"
    )


def check_batch_overrides(cfg: DictConfig, opts: list[str]) -> None:
    """Refuses a command-line `train.batch_size_per_gpu` that `train.batch_size_total` would silently replace.

    Args:
        cfg: the merged config.
        opts: the command-line overrides.

    Raises:
        ValueError: naming both keys and the opt-out.
    """
    given = [o for o in opts if o.split("=", 1)[0].strip() == PER_GPU_KEY]
    total = cfg.train.get("batch_size_total")
    if given and total is not None:
        raise ValueError(
            f"{given[-1]} has no effect while {TOTAL_KEY}={total} fixes the total batch (the per-GPU batch is "
            f"derived from the GPU count); add {TOTAL_KEY}=null to set the per-GPU batch yourself"
        )


def _comparable(cfg: DictConfig) -> dict:
    c = OmegaConf.to_container(cfg, resolve=True)
    if c.get("train", {}).get("batch_size_total") is not None:
        c["train"].pop("batch_size_per_gpu", None)  # derived from the world size, which a resume may change
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
            "choose a new --out (nothing there was touched)"
        )
    saved = OmegaConf.load(saved_path)
    differing = _diff(_comparable(saved), _comparable(cfg))
    if differing:
        raise FileExistsError(
            f"output dir {output_dir!r} holds a run with a different config (keys: {', '.join(differing[:10])}); "
            "resume with the same config or choose a new --out"
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
