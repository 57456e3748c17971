"""`dinov2_cell.plugin` from a plain source checkout: no installed package mapping, patches and configs found beside
the package."""

import os
import subprocess
import sysconfig

from helpers import PYTHON, REPO, child_env


def test_plain_checkout_loads_patches_and_configs(tmp_path):
    # -S: no site processing, so the editable install's import hook (which maps dinov2_cell.patches) is absent; the
    # dependencies come from site-packages on PYTHONPATH, the package from the checkout.
    site_packages = sysconfig.get_paths()["purelib"]
    script = """
import sys
import dinov2_cell
from dinov2_cell.plugin import install, load_patches
install()
import dinov2.train.ssl_meta_arch as sma
from dinov2_cell.models.multichannel_vit import build_model_from_cfg
from dinov2_cell.train.config import build_config, configs_dir
assert sma.build_model_from_cfg is build_model_from_cfg
print(dinov2_cell.__file__, load_patches().__file__, configs_dir(), build_config("tiny_cpu_bf").student.in_chans)
"""
    env = child_env(PYTHONPATH=os.pathsep.join([REPO, site_packages]))
    proc = subprocess.run([PYTHON, "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    package, patches, configs, in_chans = proc.stdout.split()
    assert package == os.path.join(REPO, "dinov2_cell", "__init__.py")
    assert patches == os.path.join(REPO, "patches", "__init__.py")
    assert configs == os.path.join(REPO, "configs") and in_chans == "3"
