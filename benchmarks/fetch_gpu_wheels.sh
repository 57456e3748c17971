#!/usr/bin/env bash
# Downloads/builds the pure-Python wheels the GPU machine lacks (it has torch, numpy, pandas, tifffile, ... but no
# internet) into .whl/ (git-ignored), to be carried by the device tool with benchmarks/gpu_smoke.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
mkdir -p .whl
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
$PIP download -q --no-deps -d .whl dinov2==0.0.1.dev2 omegaconf==2.3.0 submitit==1.5.4 yacs==0.1.8 termcolor==3.3.0
$PIP wheel -q --no-deps -w .whl fvcore==0.1.5.post20221221 iopath==0.1.10 antlr4-python3-runtime==4.9.3
ls -la .whl
