#!/usr/bin/env bash
# Stop the cluster that start.sh started: cancel its jobs, stop its daemons (only processes
# whose command line or environment names $IJEPA_SLURM_ROOT), kill job processes left in its
# node namespaces, delete its network namespaces and bridge. Safe to run when nothing runs.
#
#   bash launchers/slurm_cluster/stop.sh           keep state and accounting (job ids go on)
#   bash launchers/slurm_cluster/stop.sh --purge   also delete $IJEPA_SLURM_ROOT
set -uo pipefail
export LC_ALL=C

ROOT=${IJEPA_SLURM_ROOT:-/tmp/ijepa-slurm}
RUN=$ROOT/run
export SLURM_CONF=$ROOT/etc/slurm.conf

say() { echo "[ijepa-slurm $(date +%T)] $*" >&2; }

running() {
  [[ -n ${1:-} && -r /proc/$1/stat ]] || return 1
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ $state != Z && $state != X ]]
}

# Ours: the process names $ROOT on its command line or has our SLURM_CONF in its environment
# (slurmdbd takes no arguments). A stale pid file never makes us kill a stranger.
ours() {
  running "$1" || return 1
  tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF "$ROOT/" && return 0
  tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$SLURM_CONF"
}

stop_daemon() {  # $1 = pid file
  local pid i
  pid=$([[ -s $1 ]] && tr -dc 0-9 <"$1")
  if [[ -n $pid ]] && ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 100); do
      running "$pid" || break
      sleep 0.1
    done
    running "$pid" && kill -KILL "$pid" 2>/dev/null
    say "stopped $(basename "$1" .pid) ($pid)"
  fi
  rm -f "$1"
}

cancel_jobs() {
  [[ -s $SLURM_CONF ]] || return 0
  ours "$([[ -s $RUN/slurmctld.pid ]] && tr -dc 0-9 <"$RUN/slurmctld.pid")" || return 0
  local jobs i
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  [[ -n ${jobs// /} ]] || return 0
  say "cancelling jobs $jobs"
  timeout 10 scancel $jobs 2>/dev/null
  for i in $(seq 30); do
    [[ -z $(timeout 5 squeue -h -o %A 2>/dev/null) ]] && break
    sleep 0.5
  done
}

kill_namespace_leftovers() {  # job steps orphaned inside the node UTS namespaces
  local f ns pid n=0
  for f in "$RUN"/*.uts; do
    [[ -e $f ]] || continue
    ns=$(cat "$f")
    for pid in /proc/[0-9]*; do
      pid=${pid#/proc/}
      [[ $(readlink "/proc/$pid/ns/uts" 2>/dev/null) == "$ns" ]] || continue
      kill -KILL "$pid" 2>/dev/null && n=$((n + 1))
    done
    rm -f "$f"
  done
  ((n)) && say "killed $n leftover process(es) in the node namespaces"
  return 0
}

remove_network() {
  local ns pid
  if [[ -s $RUN/netns ]]; then
    for ns in $(cat "$RUN/netns"); do
      [[ -e /run/netns/$ns ]] || continue
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
      ip netns del "$ns"
    done
    say "removed network namespaces $(tr '\n' ' ' <"$RUN/netns")"
  fi
  [[ -s $RUN/bridge ]] && ip link del "$(cat "$RUN/bridge")" 2>/dev/null
  rm -f "$RUN/netns" "$RUN/bridge"
}

main() {
  [[ -d $ROOT ]] || return 0
  cancel_jobs
  local f
  for f in "$RUN"/slurmd-*.pid; do [[ -e $f ]] && stop_daemon "$f"; done
  for f in slurmctld slurmdbd mariadbd munged; do stop_daemon "$RUN/$f.pid"; done
  kill_namespace_leftovers
  remove_network
  rm -f "$RUN/config.sha"
  if [[ ${1:-} == --purge ]]; then
    rm -rf "$ROOT"
    say "deleted $ROOT"
  fi
  return 0
}

main "$@"
