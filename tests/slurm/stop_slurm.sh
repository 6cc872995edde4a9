#!/usr/bin/env bash
# Stop the cluster started by start_slurm.sh: cancel its jobs, stop slurmd and slurmctld (and
# munged if start_slurm.sh started it) by the pids in their pid files, never by name; remove
# the /etc/slurm links it made. Safe to run when nothing is running.
BASE=${LOTTO_SLURM_BASE:-${TMPDIR:-/tmp}/lotto-slurm}
export SLURM_CONF=$BASE/etc/slurm.conf

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if alive "$BASE/run/slurmctld.pid"; then # only talk to a live slurmctld
  jobs=$(squeue -h -o %i 2>/dev/null)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086  # one argument per job id
    scancel $jobs 2>/dev/null
    for _ in $(seq 50); do
      [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
fi

stop() { # NAME PIDFILE: SIGTERM, wait up to 10 s, then SIGKILL
  local name=$1 file=$2 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  rm -f "$file"
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid"
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$name (pid $pid) ignored SIGTERM; SIGKILL"
    kill -KILL "$pid"
  fi
  echo "stopped $name (pid $pid)"
}
stop slurmd "$BASE/run/slurmd.pid"
stop slurmctld "$BASE/run/slurmctld.pid"
if [ -f "$BASE/run/munged.ours" ]; then
  stop munged /run/munge/munged.pid
  rm -f "$BASE/run/munged.ours"
fi

for f in slurm.conf gres.conf; do # only the links that point into this cluster's BASE
  if [ -L "/etc/slurm/$f" ] && [ "$(readlink "/etc/slurm/$f")" = "$BASE/etc/$f" ]; then
    rm -f "/etc/slurm/$f"
  fi
done
exit 0
