#!/usr/bin/env bash
# GPU smoke test + throughput figures, for a machine lent by the `device` tool (or any CUDA box).
#   here:   benchmarks/fetch_gpu_wheels.sh            # once: pure-Python wheels the GPU image lacks -> .whl/
#   device: bash benchmarks/gpu_smoke.sh              # with `.whl` carried; writes a summary to $OUT
# It (1) times one training step of our local-aggregation meta-arch vs upstream SSLMetaArch at 518 px (ViT-S/14),
# (2) trains ViT-S/14 at 224 px for 50 iterations through our main (images/s, peak memory), (3) checks a
# single-GPU FSDP checkpoint save + resume (upstream issue #273), (4) trains 30 iterations at 518 px (paper crops).
# SMOKE_CPU=1 runs the same steps with the tiny CPU config, to check this script without a GPU.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_smoke_out}; mkdir -p "$OUT"
W=${SMOKE_WORK:-/tmp/gpu_smoke}; rm -rf "$W"; mkdir -p "$W"
PY=${PY:-python3}
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

if [ -d .whl ] && [ -z "${SMOKE_CPU:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD PYTHONSAFEPATH=1  # the checkout itself provides dinov2_cell
fi
if [ -n "${SMOKE_CPU:-}" ]; then
  CFG=configs/tiny_cpu_fluo.yaml; SIZE=96; G1=56; G2=56; L=28; B=8; NW=0; STEP_ARGS=(--batch 8 --iters 3 --warmup 1)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/summary.txt"
  CFG=configs/cpjump1_vits14_fluo.yaml; SIZE=256; G1=224; G2=518; L=98; B=32; NW=12
  STEP_ARGS=(--batch 32 --iters 10 --warmup 3 crops.global_crops_size=518 crops.local_crops_size=98)
fi
$PY -c "import torch; from dinov2_cell.plugin import install; install(); print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/summary.txt"

log "synthetic plates (2 plates x 48 wells x 9 sites, ${SIZE} px)"
$PY -m dinov2_cell.synthetic --out "$W/plates" --num-plates 2 --wells 48 --size $SIZE --num-workers 8 --no-progress >/dev/null || exit 1

log "1) one training step, ours (local aggregation) vs upstream SSLMetaArch"
$PY benchmarks/train_step.py --config $CFG "${STEP_ARGS[@]}" 2>&1 | grep -v Warning | tail -8 | tee -a "$OUT/summary.txt"

common=(--config-file $CFG train.dataset_path=CPJUMP1:root=$W/plates:channels=fluo train.batch_size_total=null train.batch_size_per_gpu=$B
        train.num_workers=$NW train.OFFICIAL_EPOCH_LENGTH=10 optim.warmup_epochs=1 teacher.warmup_teacher_temp_epochs=1
        evaluation.eval_period_iterations=0 crops.local_crops_size=$L)
summarize() {  # run dir, label: median step time -> images/s; peak memory from the log
  $PY - "$1" "$2" "$B" <<'PYEOF' | tee -a "$OUT/summary.txt"
import json, re, sys, glob
run, label, b = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [json.loads(l) for l in open(f"{run}/training_metrics.json")]
t = sorted(r["iter_time"] for r in rows[1:]) or [rows[0]["iter_time"]]
med = t[len(t) // 2]
mem = [float(m) for f in glob.glob(f"{run}/logs/*") for m in re.findall(r"max mem: (\d+)", open(f).read())]
print(f"{label}: {med:.3f} s/iter, {b / med:.1f} images/s (batch {b}), peak GPU memory {max(mem) if mem else float('nan'):.0f} MB,"
      f" last total_loss {rows[-1]['total_loss']:.3f}")
PYEOF
}

log "2) ViT-S/14 at ${G1} px, 50 iterations through python -m dinov2_cell.run.train"
$PY -m dinov2_cell.run.train "${common[@]}" --out "$W/run224" crops.global_crops_size=$G1 optim.epochs=5 \
  > "$OUT/train224.log" 2>&1 || { tail -30 "$OUT/train224.log"; exit 1; }
ls "$W/run224" | tee -a "$OUT/summary.txt"
summarize "$W/run224" "train ${G1}px"

log "3) resume: back to the iteration-29 checkpoint, same command again"
rm -f "$W/run224/model_final.rank_0.pth"; rm -rf "$W/run224/eval/final"
echo -n "model_0000029.rank_0.pth" > "$W/run224/last_checkpoint.rank_0"
$PY -m dinov2_cell.run.train "${common[@]}" --out "$W/run224" crops.global_crops_size=$G1 optim.epochs=5 \
  > "$OUT/resume224.log" 2>&1 || { tail -30 "$OUT/resume224.log"; exit 1; }
grep -o "Starting training from iteration [0-9]*" "$OUT/resume224.log" | tee -a "$OUT/summary.txt"
test -f "$W/run224/eval/final/teacher_checkpoint.pth" && log "resume OK: final teacher checkpoint written"

log "4) ViT-S/14 at ${G2} px (paper crops), 30 iterations"
$PY -m dinov2_cell.run.train "${common[@]}" --out "$W/run518" crops.global_crops_size=$G2 optim.epochs=3 \
  > "$OUT/train518.log" 2>&1 || { tail -30 "$OUT/train518.log"; exit 1; }
summarize "$W/run518" "train ${G2}px"
log "done"
