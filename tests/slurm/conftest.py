"""Fixtures for the tests on a real SLURM (`slurm/testing/start_slurm.sh` starts one on this machine).

With `DINOV2_CELL_REAL_SLURM=1` (CI sets it after starting the scheduler) a missing or unresponsive scheduler fails
these tests; without it they are skipped where there is no `sinfo` or no controller answers.
"""

import os
import shutil
import subprocess

import pytest

REQUIRED = os.environ.get("DINOV2_CELL_REAL_SLURM", "") not in ("", "0")
START = "slurm/testing/start_slurm.sh"


def _unavailable():
    """Why no usable scheduler is here, or None."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no sinfo/sbatch on PATH"
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return f"sinfo fails: {proc.stderr.strip()[:200]}"
    states = proc.stdout.split()
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"no usable node (states: {states})"
    return None


@pytest.fixture(scope="session")
def real_slurm():
    """Fails (with DINOV2_CELL_REAL_SLURM=1) or skips unless a SLURM controller and a usable node answer."""
    why = _unavailable()
    if why and REQUIRED:
        pytest.fail(f"DINOV2_CELL_REAL_SLURM is set but {why}; start one with {START}")
    if why:
        pytest.skip(f"real SLURM: {why} (start one with {START})")
