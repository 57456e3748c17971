"""Package architecture: the import graph has no cycle and no upward arrow, importing changes nothing in upstream
DINOv2, and `dinov2_cell.plugin.install()` is the one idempotent place that does."""

import ast
import os
import subprocess
import textwrap

import pytest

from helpers import PYTHON, REPO, child_env

# Source folders and the package they are installed as (setup.py maps the top-level patches/ folder).
SOURCES = (("dinov2_cell", "dinov2_cell"), ("patches", "dinov2_cell.patches"))

# Layers, lowest first. A module may import modules of its own layer or of a lower one, never of a higher one.
# Entry points (command-line mains) form the top layer; they are listed by prefix here and also found by their
# `if __name__ == "__main__":` block, so a library module that grows a CLI is held to the same rule.
LAYERS = (
    ("core", ("dinov2_cell", "dinov2_cell.cli", "dinov2_cell.atomic", "dinov2_cell.columns")),
    (
        "library",
        (
            "dinov2_cell.data",
            "dinov2_cell.augment",
            "dinov2_cell.models",
            "dinov2_cell.synthetic",
            "dinov2_cell.eval",
            "dinov2_cell.profiles",
            "dinov2_cell.patches",
            "dinov2_cell.plugin",
        ),
    ),
    ("training", ("dinov2_cell.train",)),
    ("reporting", ("dinov2_cell.report",)),  # reads training logs (train.health's flags) and eval outputs
    ("api", ("dinov2_cell.api",)),
    ("entry point", ("dinov2_cell.embed", "dinov2_cell.demo", "dinov2_cell.run")),
)
# The one allowed upward arrow: the package's lazy `dinov2_cell.load` (a module `__getattr__` that imports the API on
# first use, so that `import dinov2_cell` stays light; tests/test_api.py checks that it does).
LAZY_FACADE = {("dinov2_cell", "dinov2_cell.api")}


def _modules():
    """{module name: (path, is_package)} for every module of the package, patches included."""
    out = {}
    for folder, package in SOURCES:
        top = os.path.join(REPO, folder)
        for d, dirs, files in os.walk(top):
            dirs[:] = [x for x in dirs if not x.startswith((".", "__pycache__"))]
            for f in files:
                if not f.endswith(".py"):
                    continue
                parts = os.path.relpath(os.path.join(d, f), top)[:-3].split(os.sep)
                is_package = parts[-1] == "__init__"
                name = ".".join([package] + (parts[:-1] if is_package else parts))
                out[name] = (os.path.join(d, f), is_package)
    return out


def _imports(name, path, is_package, modules):
    """Intra-package modules imported anywhere in the file (module level, in functions, importlib calls)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return {m for m in found if m in modules and m != name}


def _is_cli(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = {getattr(n, "id", None) for n in [node.test.left, *node.test.comparators]}
            values = {getattr(n, "value", None) for n in [node.test.left, *node.test.comparators]}
            if "__name__" in names and "__main__" in values:
                return True
    return False


def _layer(name, path):
    if name.endswith(".__main__") or _is_cli(path):
        return len(LAYERS) - 1
    best, rank = "", None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > len(best):
                best, rank = p, i
    return rank


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return modules, {m: _imports(m, p, pkg, modules) for m, (p, pkg) in modules.items()}


def test_import_graph_has_no_cycle(graph):
    _, edges = graph
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_every_module_has_a_layer_and_imports_only_downwards(graph):
    modules, edges = graph
    layer = {m: _layer(m, p) for m, (p, _) in modules.items()}
    unplaced = sorted(m for m, r in layer.items() if r is None)
    assert not unplaced, f"modules in no layer (add them to LAYERS in this test): {unplaced}"
    upward = sorted(
        f"{a} ({LAYERS[layer[a]][0]}) -> {b} ({LAYERS[layer[b]][0]})"
        for a in edges
        for b in edges[a]
        if layer[b] > layer[a] and (a, b) not in LAZY_FACADE
    )
    assert not upward, "imports running up the layers:\n" + "\n".join(upward)


def test_the_graph_sees_function_level_and_relative_imports(graph):
    """The checks above are only as good as the edges: these are known ones of each kind."""
    _, edges = graph
    assert "dinov2_cell.models.multichannel_vit" in edges["dinov2_cell.plugin"]  # inside install()
    assert "dinov2_cell.patches._torch_xformers" in edges["dinov2_cell.patches.layers_block"]  # `from . import`
    assert "dinov2_cell.data.registry" in edges["dinov2_cell.patches.data_loaders"]  # inside a function
    assert "dinov2_cell.patches.train_ssl_meta_arch" in edges["dinov2_cell.plugin"]  # importlib.import_module


def _run(script):
    proc = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(script)], cwd=REPO, env=child_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


# Lists, in a subprocess, every function or class an upstream module holds that comes from dinov2_cell or carries
# a dinov2_cell marker: names, and attributes of upstream classes.
_FOREIGN = """
import sys, types
def foreign_names():
    out = []
    for mod_name, mod in sorted(sys.modules.items()):
        if mod is None or not (mod_name == "dinov2" or mod_name.startswith("dinov2.")):
            continue
        for key, value in sorted(vars(mod).items()):
            members = [(key, value)]
            if isinstance(value, type) and value.__module__.startswith("dinov2."):
                members += [(f"{key}.{k}", v) for k, v in sorted(vars(value).items())]
            for k, v in members:
                origin = getattr(v, "__module__", None) or ""
                marked = getattr(v, "__dinov2_cell_patched__", False) or getattr(v, "__dinov2_cell_hook__", None)
                if callable(v) and (origin.startswith("dinov2_cell") or marked):
                    out.append(f"{mod_name}.{k}")
        if isinstance(getattr(mod, "torch", None), types.ModuleType) and mod.torch.__name__ != "torch":
            out.append(f"{mod_name}.torch")
    return out
"""


def test_importing_every_module_patches_nothing(graph):
    modules, _ = graph
    script = (
        _FOREIGN
        + f"""
import importlib, logging
names = {sorted(m for m in modules if not m.endswith("__main__"))!r}
for name in names:
    importlib.import_module(name)
# The check below is not vacuous: upstream's training code was imported (by the local-aggregation meta-arch).
assert "dinov2.train.ssl_meta_arch" in sys.modules and "dinov2.train.train" in sys.modules
import dinov2.models, dinov2.train.ssl_meta_arch as sma
assert sma.build_model_from_cfg is dinov2.models.build_model_from_cfg
import dinov2.models.vision_transformer as vits
assert not hasattr(vits, "vit_cell_tiny")
assert foreign_names() == [], foreign_names()
assert sys.modules["dinov2_cell.patches"]._applied is False
from dinov2_cell import plugin
assert not plugin.is_installed()
stand_in = sys.modules.get("xformers")
assert stand_in is None or not getattr(stand_in, "__dinov2_cell_standin__", False)
assert logging.getLogger().handlers == [], "importing configured logging"
print(len(names), "modules imported")
"""
    )
    assert "modules imported" in _run(script)


def test_registry_imports_a_builtin_dataset_only_when_named():
    _run(
        """
        import sys
        from dinov2_cell.data.registry import parse_dataset_str
        assert parse_dataset_str("ImageNet:split=TRAIN:root=/x") is None
        assert "dinov2_cell.data.cpjump1_dataset" not in sys.modules
        cls, kwargs = parse_dataset_str("CPJUMP1:root=/x:channels=fluo")
        assert cls.__name__ == "CPJUMP1Dataset" and kwargs["root"] == "/x"
        """
    )


def test_install_is_idempotent_and_puts_every_rebinding_in_place():
    out = _run(
        _FOREIGN
        + """
import dinov2.data
from dinov2_cell import plugin
from dinov2_cell.augment.collate import collate_cell_data_and_cast
from dinov2_cell.models.multichannel_vit import TINY_ARCHS, build_model_from_cfg

plugin.install()
import dinov2.data.loaders as loaders
import dinov2.models.vision_transformer as vits
import dinov2.train.ssl_meta_arch as sma
import dinov2.train.train as train

assert plugin.is_installed() and sys.modules["dinov2_cell.patches"]._applied
assert sma.build_model_from_cfg is build_model_from_cfg
assert all(getattr(vits, n) is f for n, f in TINY_ARCHS.items())
assert train.collate_data_and_cast is collate_cell_data_and_cast
cls, kwargs = loaders._parse_dataset_str("CPJUMP1:root=/x")
assert cls.__name__ == "CPJUMP1Dataset"
first = {n: id(getattr(sys.modules[n.rsplit(".", 1)[0]], n.rsplit(".", 1)[1], None)) for n in foreign_names()
         if n.rsplit(".", 1)[0] in sys.modules}
for name in ("build_model_from_cfg", "DataAugmentationDINO", "make_dataset", "MetricLogger"):
    assert any(n.endswith("." + name) for n in foreign_names()), name

# No run bound: upstream's augmentation and metric logger.
aug = train.DataAugmentationDINO((0.32, 1.0), (0.05, 0.32), 2, global_crops_size=32, local_crops_size=16)
assert type(aug) is dinov2.data.DataAugmentationDINO
# A bound run: its augmentation and prebuilt dataset; unbinding returns to upstream's.
marker, dataset = object(), type("D", (), {})()
plugin.bind_training_run(augmentation=lambda *a, **k: marker, dataset=dataset)
assert train.DataAugmentationDINO((0.3, 1.0), (0.05, 0.3), 2) is marker
built = train.make_dataset(dataset_str="CPJUMP1:root=/nowhere", transform="T", target_transform=lambda _: ())
assert built is dataset and dataset.transform == "T" and dataset.target_transform(1) == ()
plugin.unbind_training_run()
assert type(train.DataAugmentationDINO((0.3, 1.0), (0.05, 0.3), 2)) is dinov2.data.DataAugmentationDINO

plugin.install()
plugin.install()
again = {n: id(getattr(sys.modules[n.rsplit(".", 1)[0]], n.rsplit(".", 1)[1], None)) for n in foreign_names()
         if n.rsplit(".", 1)[0] in sys.modules}
assert again == first, set(again.items()) ^ set(first.items())
print("ok", len(first))
"""
    )
    assert out.startswith("ok")
