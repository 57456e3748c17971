#!/usr/bin/env bash
# Installs (Debian/Ubuntu packages slurm-wlm + munge) and starts a single-node SLURM on this machine for the tests:
# slurmctld + slurmd on localhost, one partition, and a gpu:4 GRES backed by dummy device files so that GPU requests
# schedule on a machine without GPUs (the jobs see no CUDA device). Needs root (or sudo). Idempotent: when the
# scheduler is already up with this configuration it only prints `sinfo` and exits.
#
# Usage: slurm/testing/start_slurm.sh [--stop]
#   env SLURM_TEST_PARTITION  partition name (default: test)
#   env SLURM_TEST_TIMEOUT    seconds to wait for an idle node (default: 60)
set -euo pipefail

partition=${SLURM_TEST_PARTITION:-test}
wait_s=${SLURM_TEST_TIMEOUT:-60}
conf_dir=/etc/slurm
state=/var/lib/slurm-test
logs=/var/log/slurm-test
t0=$(date +%s)

if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "start_slurm.sh: needs root (or sudo)" >&2; exit 1; }
  exec sudo -E "$0" "$@"
fi

pid_of() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && cat "$1"; }

stop() {
  local f p pids=()
  for f in "$state/slurmd.pid" "$state/slurmctld.pid" /run/munge/munged.pid; do
    if p=$(pid_of "$f"); then kill "$p"; pids+=("$p"); fi
  done
  # wait (up to 10 s) until they are gone: a new slurmctld cannot bind the port an old one still holds
  for _ in $(seq 1 50); do
    for p in ${pids[@]+"${pids[@]}"}; do kill -0 "$p" 2>/dev/null && { sleep 0.2; continue 2; }; done
    break
  done
}

if [ "${1:-}" = --stop ]; then stop; echo "stopped"; exit 0; fi

# 1. Packages (skipped when present).
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
echo "packages ready ($(($(date +%s) - t0)) s): $(slurmctld -V)"

# 2. Configuration. Node size from what slurmd detects (slurmd -C), so the node is never drained for "low CPUs".
host=$(hostname -s)
node_line=$(slurmd -C | sed -n 's/^\(NodeName=[^ ]*\) \(.*\)$/\2/p' | sed 's/ *UpTime=.*//')
# slurmd -C prints e.g. "CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=23000"
[ -n "$node_line" ] || { echo "start_slurm.sh: slurmd -C gave no node line" >&2; exit 1; }
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
# Leave a little memory unconfigured so slurmd's own check never finds less than configured.
node_line=$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 9 / 10))/" <<<"$node_line")

mkdir -p "$conf_dir" "$state/ctld" "$state/d" "$logs"
# Four dummy GPU devices: character devices like /dev/null (1:3); plain files if mknod is not allowed here (slurmd
# then logs "not a valid character or block device" but counts them all the same).
for i in 0 1 2 3; do
  [ -e "/dev/dummy_gpu$i" ] || mknod -m 0666 "/dev/dummy_gpu$i" c 1 3 2>/dev/null || touch "/dev/dummy_gpu$i"
done

new_conf=$(cat <<CONF
# Written by slurm/testing/start_slurm.sh: a single-node test scheduler (no cgroups, count-only GPUs).
ClusterName=dinov2cell-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may start again only after its credential expired (default 120 s): keep the test's requeue short.
AuthInfo=cred_expire=5
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Containers have no usable cgroups.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Jobs whose dependency is satisfied or that were requeued are considered at once rather than at the next pass.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=2,bf_interval=2
JobRequeue=1
ReturnToService=2
MailProg=/bin/true
KillWait=10
MinJobAge=600
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 $node_line Gres=gpu:4 State=UNKNOWN
PartitionName=$partition Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
)
# (Flags=CountOnly would need no files, but slurmd 22.05 then reports 0 GPUs and the node is marked invalid.)
new_gres="# Written by slurm/testing/start_slurm.sh: four GPUs backed by dummy devices (no CUDA behind them).
NodeName=$host Name=gpu File=/dev/dummy_gpu[0-3]"

up() {
  pid_of /run/munge/munged.pid >/dev/null && pid_of "$state/slurmd.pid" >/dev/null &&
    scontrol ping 2>/dev/null | grep -q 'is UP' &&
    sinfo -h -n "$host" -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'
}

if [ "$new_conf" = "$(cat "$conf_dir/slurm.conf" 2>/dev/null)" ] && [ "$new_gres" = "$(cat "$conf_dir/gres.conf" 2>/dev/null)" ] &&
  up; then
  echo "already up ($(($(date +%s) - t0)) s)"
  sinfo
  exit 0
fi
stop
printf '%s\n' "$new_conf" >"$conf_dir/slurm.conf"
printf '%s\n' "$new_gres" >"$conf_dir/gres.conf"

# 3. munge: a key if the package made none, then the daemon (as the munge user, which owns the key).
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
  else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! pid_of /run/munge/munged.pid >/dev/null; then
  rm -f /run/munge/munge.socket.2*
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid
fi
munge -n | unmunge >/dev/null

# 4. slurmctld and slurmd (each daemonises itself). -c: start from a clean state, no jobs left from an earlier run.
slurmctld -c
for i in $(seq 1 50); do
  scontrol ping 2>/dev/null | grep -q 'is UP' && break
  if [ "$i" = 50 ]; then
    echo "start_slurm.sh: slurmctld did not start" >&2; tail -n 20 "$logs/slurmctld.log" >&2; exit 1
  fi
  sleep 0.2
done
slurmd
deadline=$(($(date +%s) + wait_s))
until sinfo -h -n "$host" -o '%T' 2>/dev/null | grep -Eq '^idle'; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "start_slurm.sh: node not idle after ${wait_s} s" >&2
    sinfo -N -l >&2 || true
    tail -n 20 "$logs/slurmctld.log" "$logs/slurmd.log" >&2 || true
    exit 1
  fi
  # A node left DOWN/DRAIN by an earlier configuration is brought back.
  if sinfo -h -n "$host" -o '%T' 2>/dev/null | grep -Eq '^(down|drain)'; then
    scontrol update nodename="$host" state=resume 2>/dev/null || true
  fi
  sleep 1
done
echo "started ($(($(date +%s) - t0)) s)"
sinfo
