#!/usr/bin/env bash
# Start a throw-away single-node SLURM cluster (munged, slurmctld, slurmd) with fake GPUs,
# for tests/test_slurm.py and for trying profiles/slurm by hand. Debian 12, as root, no
# systemd needed. Installs slurmctld slurmd slurm-client munge with apt-get if missing.
#
#   bash tests/slurm/start_slurm.sh     # (re)start from a clean state; ready in ~2 s
#   sinfo; sbatch --wrap hostname; squeue
#   bash tests/slurm/stop_slurm.sh      # stops the daemons by their pid files
#
# Knobs (environment): LOTTO_SLURM_BASE (state, logs, pid files; default
# ${TMPDIR:-/tmp}/lotto-slurm), SLURM_CPUS (8; may exceed the real cores),
# SLURM_MEM_MB (16000), SLURM_GPUS (fake GPUs, 4), SLURM_MINJOBAGE (300),
# SLURM_CRED_EXPIRE (5: seconds a requeued job waits before it starts again; SLURM's
# default, 120, would make a pre-emption test wait two minutes), SLURM_KILLWAIT (2: seconds
# between SIGTERM and SIGKILL when a job is cancelled or requeued; SLURM: 30). The scheduler
# runs every 2 s (SLURM: 60 s, backfill 30 s), so a requeued job starts as soon as it may.
#
# What getting Snakemake jobs through this cluster taught (each found by a failure):
# - Fake GPUs must be device files (mknod clones of /dev/null): slurmd refuses other gres
#   File= entries. With them SLURM sets CUDA_VISIBLE_DEVICES per job and per job step.
# - The config must be visible at /etc/slurm/slurm.conf (linked there): the Snakemake
#   jobstep plugin drops SLURM_CONF before its nested srun.
# - No accounting here: Snakemake needs `slurm-status-command: squeue` (profiles/slurm), or it
#   waits forever on sacct; `slurm-no-account: true` silences its account guess.
# - Jobs inherit the submitting shell's environment: put the venv first on PATH.
# - Processes are tracked by process group (proctrack/pgid), not by parent pid: a cancelled
#   group job's outer `snakemake` did not exit on SIGTERM, and once its batch shell was gone
#   linuxproc had lost it, so it outlived the job (and the cluster) as an orphan.
set -euo pipefail

BASE=${LOTTO_SLURM_BASE:-${TMPDIR:-/tmp}/lotto-slurm}
CPUS=${SLURM_CPUS:-8}
MEM=${SLURM_MEM_MB:-16000}
NGPU=${SLURM_GPUS:-4}
MINJOBAGE=${SLURM_MINJOBAGE:-300}
CRED_EXPIRE=${SLURM_CRED_EXPIRE:-5}
KILLWAIT=${SLURM_KILLWAIT:-2}
HOST=$(hostname -s)
HERE=$(cd "$(dirname "$0")" && pwd)
t0=${EPOCHREALTIME/./}

log() {
  local us=$((${EPOCHREALTIME/./} - t0))
  printf '[start_slurm %3d.%02ds] %s\n' $((us / 1000000)) $((us % 1000000 / 10000)) "$*"
}

[ "$(id -u)" = 0 ] || {
  echo "start_slurm.sh: must run as root (it starts slurmd)" >&2
  exit 1
}

# 1. packages ---------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
  ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || {
    echo "start_slurm.sh: SLURM is not installed and apt-get is missing" >&2
    exit 1
  }
  log "installing slurmctld slurmd slurm-client munge"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi

# 2. a clean state: stop what a previous start left, wipe its files ----------------------
if [ -d "$BASE/run" ]; then
  LOTTO_SLURM_BASE=$BASE bash "$HERE/stop_slurm.sh" >/dev/null 2>&1 || true
fi
rm -rf "$BASE/state" "$BASE/spool" "$BASE/log" "$BASE/run" "$BASE/etc" "$BASE/fakegpu"
mkdir -p "$BASE"/{state,spool,log,run,etc,fakegpu}

# 3. munge: reuse a running munged, else start one and remember that we did --------------
if [ ! -s /etc/munge/munge.key ]; then
  log "creating munge key"
  mungekey --create --force 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged # forks; pid in /run/munge/munged.pid
  touch "$BASE/run/munged.ours"        # stop_slurm.sh stops munged only if we started it
  for _ in $(seq 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
munge -n | unmunge >/dev/null
log "munged up (pid $(cat /run/munge/munged.pid 2>/dev/null || echo '?'))"

# 4. config ------------------------------------------------------------------------------
gpu_files=""
if [ "$NGPU" -gt 0 ]; then
  for i in $( # a symlink to /dev/null where mknod is not allowed
    seq 0 $((NGPU - 1))
  ); do
    mknod "$BASE/fakegpu/nvidia$i" c 1 3 2>/dev/null || ln -s /dev/null "$BASE/fakegpu/nvidia$i"
  done
  gpu_files="$BASE/fakegpu/nvidia[0-$((NGPU - 1))]"
fi

cat >"$BASE/etc/slurm.conf" <<EOF
ClusterName=lotto
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=$MINJOBAGE
KillWait=$KILLWAIT
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$([ "$NGPU" -gt 0 ] && echo "GresTypes=gpu")
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM $([ "$NGPU" -gt 0 ] && echo "Gres=gpu:$NGPU") State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
if [ "$NGPU" -gt 0 ]; then
  printf '%s\n' "AutoDetect=off" "NodeName=$HOST Name=gpu File=$gpu_files" >"$BASE/etc/gres.conf"
fi

mkdir -p /etc/slurm
for f in slurm.conf gres.conf; do
  if [ -e "/etc/slurm/$f" ] && [ ! -L "/etc/slurm/$f" ]; then
    echo "start_slurm.sh: refusing to replace the real /etc/slurm/$f" >&2
    exit 1
  fi
  rm -f "/etc/slurm/$f"
  [ -e "$BASE/etc/$f" ] && ln -s "$BASE/etc/$f" "/etc/slurm/$f"
done
export SLURM_CONF=$BASE/etc/slurm.conf

# 5. daemons (they fork and write their pid files) ---------------------------------------
/usr/sbin/slurmctld -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF"

# 6. ready when the node is idle ---------------------------------------------------------
state=""
for _ in $(seq 300); do
  state=$(sinfo -h -N -n "$HOST" -o %t 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 0.1
done
if [ "$state" != idle ]; then
  echo "start_slurm.sh: node state is '$state', not idle; logs in $BASE/log/" >&2
  tail -20 "$BASE/log/slurmctld.log" "$BASE/log/slurmd.log" >&2
  exit 1
fi
log "cluster ready: $(sinfo -h -o '%P %a %D nodes, CPUs(A/I/O/T) %C, %G')"
echo "slurmctld pid $(cat "$BASE/run/slurmctld.pid"), slurmd pid $(cat "$BASE/run/slurmd.pid"); logs in $BASE/log"
