#!/usr/bin/env bash
# SLURM array jobs for the dinov2_cell workflow. Nothing site-specific is baked in: partition, account, paths and
# the Python environment come from options or the environment.
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: slurm/launch.sh COMMAND [options]

Commands:
  train   the fluorescent and the brightfield model as one 2-task array (task 0 = fluo, task 1 = bf);
          each task runs `python -m dinov2_cell.run.train` under srun on --nodes x --gpus-per-node GPUs,
          requeued on preemption and resumed from its last checkpoint.
  embed   per-plate embedding extraction as an array (one task per chunk of --plates-per-task plates), then a
          merge job that depends on the whole array (afterok) and writes the merged profiles + submission CSV.
  cellprofiler
          CellProfiler features (cp_measure, CPU only) as an array over plates: task I of N runs
          `python -m dinov2_cell.profiles.cellprofiler --shard I/N --no-merge` (plates I, I+N, ... of the sorted
          list, N = plates / --plates-per-task rounded up), then a merge job that depends on the whole array
          (afterok) runs the JUMP recipe over all plates (--merge-only) and writes profiles.parquet.

SLURM options (the same names, units and defaults as `python -m dinov2_cell.run.train --slurm`):
  --partition P        partition (default: $SLURM_PARTITION or SLURM's default)
  --account A          account (default: $SLURM_ACCOUNT)
  --qos Q              quality of service
  --time T             time limit per task, SLURM syntax: minutes, HH:MM:SS or D-HH:MM:SS
                       (default 48:00:00 for train, 2:00:00 for embed, 24:00:00 for cellprofiler)
  --nodes N            train: nodes per task (default 1)
  --gpus-per-node G    train: GPUs per node, one task each (default 4)
  --cpus-per-gpu C     CPU cores per GPU task (default 10); cellprofiler: CPU cores (= worker processes) per task
  --mem-gb M           memory per node in GB (default: SLURM's)
  --exclude NODES      nodes to exclude
  --comment TEXT       comment passed to the scheduler

Other options:
  --python PY          python of the environment that has dinov2_cell (default: python)
  --logs DIR           where SLURM writes stdout/stderr (default: slurm_logs)
  --dry-run            print the sbatch commands and job scripts instead of submitting
  -h, --help           this help

train options:
  --output-root DIR    runs go to DIR/fluo and DIR/bf (required)
  --fluo-config F      packaged config name or yaml file (default cpjump1_vits14_fluo)
  --bf-config F        packaged config name or yaml file (default cpjump1_vits14_bf)
  --data-root DIR      dataset root of both trainings (default: $CPJUMP1_ROOT, read by the paper configs)
  extra `key=value` arguments after `--` are passed to both trainings as config overrides
  Before anything is queued, `python -m dinov2_cell.run.train --check` validates both trainings (config keys,
  warm-ups, output dirs, the batch over the GPUs, the data: root, plates, channels, a readable site per plate);
  when it fails nothing is submitted (exit 2). --dry-run skips the check.

embed options:
  --fluo RUN           fluorescent training output dir (or teacher checkpoint)
  --bf RUN             brightfield training output dir (or teacher checkpoint)
  --data-root DIR      plates (LoadData CSVs / Phenix folders / prepared store) (required)
  --out DIR            profiles output dir (required)
  --plates A,B,...     comma-separated plate barcodes (default: the 24 compound plates of 2020_11_04_CPJUMP1)
  --plates-per-task K  default 1
  extra arguments after `--` are passed to `python -m dinov2_cell.embed`

cellprofiler options:
  --data-root DIR      plates (LoadData CSVs / Phenix folders / prepared store) (required)
  --out DIR            profiles output dir (required)
  --plates A,B,...     comma-separated plate barcodes (default: the 24 compound plates of 2020_11_04_CPJUMP1)
  --plates-per-task K  default 1
  extra arguments after `--` are passed to every task and to the merge job (the feature settings, e.g. --families,
  must be the same in both; --submission writes submission.csv at the merge)

Examples:
  CPJUMP1_ROOT=/data/cpg0000/source_4 slurm/launch.sh train --output-root runs/paper --partition gpu --dry-run
  slurm/launch.sh train --output-root runs/paper --data-root /data/cpg0000/source_4 --partition gpu
  slurm/launch.sh embed --fluo runs/paper/fluo --bf runs/paper/bf --data-root /data/cpg0000/source_4 --out profiles
  slurm/launch.sh cellprofiler --data-root /data/cpg0000/source_4 --out cp_profiles --partition cpu -- --submission
TXT
}

[ $# -ge 1 ] || { usage >&2; exit 2; }
cmd=$1; shift
case "$cmd" in
  -h|--help) usage; exit 0;;
  train|embed|cellprofiler) ;;
  *) echo "unknown command: $cmd" >&2; usage >&2; exit 2;;
esac

partition=${SLURM_PARTITION:-}; account=${SLURM_ACCOUNT:-}; time_limit=""; python=python; logs=slurm_logs; dry=0
qos=""; mem_gb=""; exclude=""; comment=""
output_root=""; fluo_config=cpjump1_vits14_fluo; bf_config=cpjump1_vits14_bf
nodes=1; gpus=4; cpus=10; fluo=""; bf=""; data_root=""; out=""; plates=""; per_task=1; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --partition) partition=$2; shift 2;;
    --account) account=$2; shift 2;;
    --qos) qos=$2; shift 2;;
    --time) time_limit=$2; shift 2;;
    --mem-gb) mem_gb=$2; shift 2;;
    --exclude) exclude=$2; shift 2;;
    --comment) comment=$2; shift 2;;
    --python) python=$2; shift 2;;
    --logs) logs=$2; shift 2;;
    --dry-run) dry=1; shift;;
    --output-root) output_root=$2; shift 2;;
    --fluo-config) fluo_config=$2; shift 2;;
    --bf-config) bf_config=$2; shift 2;;
    --nodes) nodes=$2; shift 2;;
    --gpus-per-node) gpus=$2; shift 2;;
    --cpus-per-gpu) cpus=$2; shift 2;;
    # old spellings, kept for one release: --gpus / --ngpus, --cpus-per-task, --timeout (minutes, as SLURM reads
    # a bare number)
    --gpus|--ngpus) gpus=$2; shift 2;;
    --cpus-per-task) cpus=$2; shift 2;;
    --timeout) time_limit=$2; shift 2;;
    --fluo) fluo=$2; shift 2;;
    --bf) bf=$2; shift 2;;
    --data-root) data_root=$2; shift 2;;
    --out) out=$2; shift 2;;
    --plates) plates=$2; shift 2;;
    --plates-per-task) per_task=$2; shift 2;;
    -h|--help) usage; exit 0;;
    --) shift; extra=("$@"); break;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2;;
  esac
done

common=(--parsable --output="$logs/%x_%A_%a.out" --error="$logs/%x_%A_%a.err")
[ -n "$partition" ] && common+=(--partition="$partition")
[ -n "$account" ] && common+=(--account="$account")
[ -n "$qos" ] && common+=(--qos="$qos")
[ -n "$mem_gb" ] && common+=(--mem="${mem_gb}G")
[ -n "$exclude" ] && common+=(--exclude="$exclude")
[ -n "$comment" ] && common+=(--comment="$comment")

# submit SCRIPT ARGS...: prints the job id (or, with --dry-run, the command and the script, and a fake id)
submit() {
  local script=$1; shift
  if [ "$dry" = 1 ]; then
    echo "sbatch $* <<'SBATCH'" >&2
    echo "$script" >&2
    echo "SBATCH" >&2
    echo "DRYRUN_$RANDOM"
  else
    mkdir -p "$logs"
    echo "$script" | sbatch "$@"
  fi
}
quote() { local out=() a; for a in "$@"; do out+=("$(printf '%q' "$a")"); done; echo "${out[*]}"; }

if [ "$cmd" = train ]; then
  [ -n "$output_root" ] || { echo "train: --output-root is required" >&2; exit 2; }
  root_arg=()
  [ -n "$data_root" ] && root_arg=(--data-root "$data_root")
  # Refuse before queueing what the job would refuse after waiting in the queue: a bad key, a warm-up longer than the
  # run, a foreign output dir, a total batch that --nodes x --gpus-per-node GPUs cannot share, or data that is not
  # there (unset CPJUMP1_ROOT, missing plates, wrong channels, an unreadable site). Skipped with --dry-run (no
  # environment needed).
  if [ "$dry" = 0 ]; then
    for pair in "fluo $fluo_config" "bf $bf_config"; do
      set -- $pair
      "$python" -m dinov2_cell.run.train --check --config-file "$2" --out "$output_root/$1" \
        --nodes "$nodes" --gpus-per-node "$gpus" ${root_arg[@]+"${root_arg[@]}"} ${extra[@]+"${extra[@]}"} >&2 || {
        echo "train: the check of the $1 training failed; nothing was queued" >&2
        exit 2
      }
    done
  fi
  script="#!/usr/bin/env bash
set -euo pipefail
configs=($(quote "$fluo_config" "$bf_config"))
names=(fluo bf)
i=\$SLURM_ARRAY_TASK_ID
# 120 s before the time limit or on preemption SLURM sends USR2 to the training processes: they checkpoint the
# current iteration and exit 75; the task is then requeued and the new run resumes exactly there.
status=0
srun --kill-on-bad-exit=1 $(quote "$python") -m dinov2_cell.run.train --config-file \"\${configs[\$i]}\" \\
  --out $(quote "$output_root")/\${names[\$i]} $(quote ${extra[@]+"${extra[@]}"}) $(quote ${root_arg[@]+"${root_arg[@]}"}) || status=\$?
if [ \"\$status\" = 75 ]; then
  echo \"checkpointed on the signal; requeuing\"
  scontrol requeue \"\${SLURM_ARRAY_JOB_ID}_\${SLURM_ARRAY_TASK_ID}\"
fi
exit \"\$status\""
  jid=$(submit "$script" "${common[@]}" --job-name=dinov2_cell_train --array=0-1 --nodes="$nodes" \
    --ntasks-per-node="$gpus" --gpus-per-node="$gpus" --cpus-per-task="$cpus" --time="${time_limit:-48:00:00}" \
    --requeue --signal=USR2@120)
  echo "train array job: $jid (task 0 = fluo -> $output_root/fluo, task 1 = bf -> $output_root/bf)"
  exit 0
fi

# embed, cellprofiler: per-plate arrays
[ -n "$data_root" ] && [ -n "$out" ] || { echo "$cmd: --data-root and --out are required" >&2; exit 2; }
if [ -z "$plates" ]; then
  plates=$("$python" -c "from dinov2_cell.data.metadata import compound_plates; print(' '.join(compound_plates()))")
fi
IFS=', ' read -r -a plate_arr <<< "$plates"  # comma-separated (spaces still accepted)
n=${#plate_arr[@]}; tasks=$(( (n + per_task - 1) / per_task ))

if [ "$cmd" = cellprofiler ]; then
  [ "$dry" = 1 ] || [ -e "$data_root" ] || { echo "cellprofiler: --data-root $data_root: no such folder" >&2; exit 2; }
  cp_args=(--data-root "$data_root" --out "$out" --plates "$(IFS=,; echo "${plate_arr[*]}")")
  # Every task gets the whole plate list and its shard I/N: the driver keeps the sorted plates I, I+N, ...
  script="#!/usr/bin/env bash
set -euo pipefail
$(quote "$python") -m dinov2_cell.profiles.cellprofiler $(quote "${cp_args[@]}") \\
  --shard \"\$SLURM_ARRAY_TASK_ID/$tasks\" --no-merge --num-workers $cpus --no-progress \\
  $(quote ${extra[@]+"${extra[@]}"})"
  jid=$(submit "$script" "${common[@]}" --job-name=dinov2_cell_cellprofiler --array=0-$((tasks - 1)) --nodes=1 \
    --ntasks-per-node=1 --cpus-per-task="$cpus" --time="${time_limit:-24:00:00}")
  merge="#!/usr/bin/env bash
set -euo pipefail
$(quote "$python") -m dinov2_cell.profiles.cellprofiler $(quote "${cp_args[@]}") --merge-only --no-progress \\
  $(quote ${extra[@]+"${extra[@]}"})"
  mid=$(submit "$merge" "${common[@]}" --job-name=dinov2_cell_cellprofiler_merge --dependency=afterok:"$jid" \
    --nodes=1 --ntasks-per-node=1 --cpus-per-task=$((cpus < 4 ? cpus : 4)) --time=2:00:00)  # as embed's merge
  echo "cellprofiler array job: $jid ($tasks tasks over $n plates); merge job: $mid (after the array succeeds)"
  exit 0
fi

[ -n "$fluo$bf" ] || { echo "embed: give --fluo and/or --bf" >&2; exit 2; }
ckpts=()
[ -n "$fluo" ] && ckpts+=(--fluo "$fluo")
[ -n "$bf" ] && ckpts+=(--bf "$bf")
script="#!/usr/bin/env bash
set -euo pipefail
plates=($(quote "${plate_arr[@]}"))
k=$per_task; i=\$SLURM_ARRAY_TASK_ID
$(quote "$python") -m dinov2_cell.embed $(quote "${ckpts[@]}") --data-root $(quote "$data_root") --out $(quote "$out") \\
  --plates \"\$(IFS=,; echo \"\${plates[*]:\$((i * k)):\$k}\")\" --no-merge $(quote ${extra[@]+"${extra[@]}"})"
jid=$(submit "$script" "${common[@]}" --job-name=dinov2_cell_embed --array=0-$((tasks - 1)) --nodes=1 \
  --ntasks-per-node=1 --gpus-per-node=1 --cpus-per-task="$cpus" --time="${time_limit:-2:00:00}")
merge="#!/usr/bin/env bash
set -euo pipefail
$(quote "$python") -m dinov2_cell.embed $(quote "${ckpts[@]}") --data-root $(quote "$data_root") --out $(quote "$out") \\
  --merge-only $(quote ${extra[@]+"${extra[@]}"})"
# The merge uses up to 4 cores, never more than --cpus-per-gpu (a node with fewer cores would reject the job).
mid=$(submit "$merge" "${common[@]}" --job-name=dinov2_cell_merge --dependency=afterok:"$jid" --nodes=1 \
  --ntasks-per-node=1 --cpus-per-task=$((cpus < 4 ? cpus : 4)) --time=1:00:00)
echo "embed array job: $jid ($tasks tasks over $n plates); merge job: $mid (after the array succeeds)"
