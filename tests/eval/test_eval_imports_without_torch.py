"""``dinov2_cell.eval`` and ``dinov2_cell.profiles`` work on a machine without torch or upstream DINOv2.

A child interpreter gets a meta-path finder (through a ``sitecustomize`` on PYTHONPATH) that makes every import of
torch, torchvision, xformers and dinov2 fail, then imports the modules and runs ``knn_wells --help`` and a scoring.
"""

import os
import subprocess
import sys
import textwrap

from helpers import REPO

BLOCKED = ("torch", "torchvision", "xformers", "dinov2")
MODULES = [
    "dinov2_cell.eval.knn_wells",
    "dinov2_cell.eval.map",
    "dinov2_cell.eval.postprocess",
    "dinov2_cell.eval.outputs",
    "dinov2_cell.eval.inputs",
    "dinov2_cell.profiles.io",
    "dinov2_cell.profiles.merge",
    "dinov2_cell.profiles.align",
    "dinov2_cell.profiles.parts",
    "dinov2_cell.profiles.driver",
    "dinov2_cell.profiles.sites",
    "dinov2_cell.profiles.ssl",
    "dinov2_cell.profiles.baseline",
    "dinov2_cell.profiles.submission",
    "dinov2_cell.profiles.validate_submission",
    "dinov2_cell.embed",
]

SITECUSTOMIZE = textwrap.dedent(
    f"""
    import sys

    BLOCKED = {BLOCKED!r}


    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked in this test")
            return None


    sys.meta_path.insert(0, Block())
    """
)


def _env(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), REPO])
    env["PYTHONWARNINGS"] = "ignore"
    return env


def test_blocker_works(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import torch"], env=_env(tmp_path), capture_output=True, text=True)
    assert proc.returncode != 0 and "blocked in this test" in proc.stderr


def test_eval_and_profiles_import_and_run_without_torch(tmp_path, planted):
    env = _env(tmp_path)
    code = "import " + ", ".join(MODULES) + "; import sys; bad = [m for m in sys.modules if m.split('.')[0] in "
    code += f"{BLOCKED!r}]; assert not bad, bad"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmd = [sys.executable, "-m", "dinov2_cell.eval.knn_wells"]
    proc = subprocess.run(cmd + ["--help"], env=env, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "--normalize" in proc.stdout, proc.stderr[-3000:]
    profiles = tmp_path / "profiles.parquet"
    planted.to_parquet(profiles)
    proc = subprocess.run(cmd + [str(profiles)], env=env, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "U2OS->A549" in proc.stdout, proc.stderr[-3000:]
