#!/usr/bin/env bash
# The project's own SLURM cluster for the launcher tests: a real slurmctld, one slurmd per
# emulated node, slurmdbd + a private MariaDB (so `sacct` works and submitit can tell a cancelled
# job from a running one) and a private munged, all on this one machine.
#
#   bash launchers/slurm_cluster/start.sh     install what is missing, start, wait for the nodes
#   source "${IJEPA_SLURM_ROOT:-/tmp/ijepa-slurm}/env.sh"      exports SLURM_CONF for clients
#   bash launchers/slurm_cluster/stop.sh      stop everything this script started
#
# Idempotent: on a healthy cluster with the same settings it only prints sinfo. Needs root and
# Debian 12 (slurm-wlm 22.05); packages come from apt when missing.
#
# Each node n1..nN runs in its own UTS + mount namespace (hostname = node name, a private
# /etc/hosts naming all nodes) and, with IJEPA_SLURM_NET=netns, its own network namespace with
# its own address on a private bridge: a job that uses 127.0.0.1 as the master address for a
# two-node run then fails here as it would on a real cluster.
#
# Settings (environment):
#   IJEPA_SLURM_ROOT=/tmp/ijepa-slurm  config, state, logs, pid files, database
#   IJEPA_SLURM_NODES=2                emulated nodes (1 or 2 for the tests)
#   IJEPA_SLURM_CPUS=4                 CPUs per node; more than nproc oversubscribes on purpose,
#                                      so the test jobs can run side by side
#   IJEPA_SLURM_NET=netns              netns | uts (uts: all nodes share loopback; chosen
#                                      automatically when bridges cannot be created)
#   IJEPA_SLURM_SUBNET=10.77.0         /24 of the bridge (.1) and the nodes (.11, .12, ...)
#   IJEPA_SLURM_PORT=6917              slurmctld port; slurmdbd uses +2, MariaDB +400
#   IJEPA_SLURM_WAIT_S=60              bound on every wait
set -euo pipefail
export LC_ALL=C

ROOT=${IJEPA_SLURM_ROOT:-/tmp/ijepa-slurm}
NODES=${IJEPA_SLURM_NODES:-2}
CPUS=${IJEPA_SLURM_CPUS:-4}
NET=${IJEPA_SLURM_NET:-netns}
SUBNET=${IJEPA_SLURM_SUBNET:-10.77.0}
CTLD_PORT=${IJEPA_SLURM_PORT:-6917}
DBD_PORT=$((CTLD_PORT + 2))
DB_PORT=$((CTLD_PORT + 400))
WAIT_S=${IJEPA_SLURM_WAIT_S:-60}
TAG=ijs  # prefix of the bridge, veth and netns names
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

ETC=$ROOT/etc RUN=$ROOT/run LOG=$ROOT/log
export SLURM_CONF=$ETC/slurm.conf

say() { echo "[ijepa-slurm $(date +%T)] $*" >&2; }
fail() {
  say "FAILED: $*"
  exit 1
}

# Retry "$@" every 0.25 s for at most $1 seconds.
retry_for() {
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    (($(date +%s) < deadline)) || return 1
    sleep 0.25
  done
}

# Run a daemon detached from us: stdin /dev/null, output to a log, and no inherited descriptor
# above 2. munged, mariadbd and slurmdbd keep whatever they inherit open, which would keep the
# caller's pipes (a CI runner waiting for EOF) open for as long as the cluster lives.
detached() {
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if ((fd > 2)); then eval "exec $fd>&-"; fi
    done
    exec "$@"
  ) </dev/null >>"$LOG/daemons.out" 2>&1
}

install_missing() {
  local pkgs=()
  command -v slurmctld >/dev/null || pkgs+=(slurmctld)
  command -v slurmd >/dev/null || pkgs+=(slurmd)
  command -v sbatch >/dev/null || pkgs+=(slurm-client)
  command -v slurmdbd >/dev/null || pkgs+=(slurmdbd)
  command -v munged >/dev/null || pkgs+=(munge)
  command -v mariadbd >/dev/null || pkgs+=(mariadb-server-core)
  command -v mariadb >/dev/null || pkgs+=(mariadb-client-core)
  command -v nsenter >/dev/null || pkgs+=(util-linux)
  command -v ip >/dev/null || pkgs+=(iproute2)
  ((${#pkgs[@]})) || return 0
  say "installing ${pkgs[*]}"
  # The distro services must not start (no systemd here; they would use the default ports).
  local policy=/usr/sbin/policy-rc.d created=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created=1
  fi
  local apt=(apt-get -q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >"$LOG/apt.log" 2>&1 &&
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends "${pkgs[@]}" \
      >>"$LOG/apt.log" 2>&1 || {
    tail -n 25 "$LOG/apt.log" >&2
    fail "apt-get could not install ${pkgs[*]}"
  }
  ((created)) && rm -f "$policy"
  return 0
}

node_addr() { [[ $NET == netns ]] && echo "$SUBNET.$((10 + $1))" || echo "127.0.1.$1"; }
ctl_addr() { [[ $NET == netns ]] && echo "$SUBNET.1" || echo "127.0.0.1"; }

write_slurm_conf() {
  local mem i
  # RealMemory may not exceed what each slurmd detects (the whole machine).
  mem=$(awk -v n="$NODES" '/^MemTotal/ {print int($2 / 1024 * 0.8 / n)}' /proc/meminfo)
  cat <<EOF
# written by launchers/slurm_cluster/start.sh (NET=$NET NODES=$NODES CPUS=$CPUS)
ClusterName=ijepaci
SlurmctldHost=localhost($(ctl_addr))
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long in PENDING (BeginTime); the default is 120 s.
AuthInfo=socket=$ROOT/munge/socket,cred_expire=10
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# The main scheduling loop runs every 60 s by default: too slow for requeue tests.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
# submitit ignores SIGTERM; SIGKILL follows after KillWait (default 30 s).
KillWait=5
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$(ctl_addr)
AccountingStoragePort=$DBD_PORT
# With a private munge socket, connections to slurmdbd find it here (not in AuthInfo).
AccountingStoragePass=$ROOT/munge/socket
JobCompType=jobcomp/none
EOF
  (($CPUS > $(nproc))) && echo "SlurmdParameters=config_overrides"
  for i in $(seq "$NODES"); do
    local port=""
    [[ $NET == uts ]] && port=" Port=$((CTLD_PORT + 100 + i))"
    echo "NodeName=n$i NodeHostname=n$i NodeAddr=$(node_addr "$i")$port CPUs=$CPUS" \
      "Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
}

write_configs() {  # into $1
  mkdir -p "$1"
  write_slurm_conf >"$1/slurm.conf"
  # slurmdbd reads slurmdbd.conf next to SLURM_CONF; it must be private (mode 600).
  cat >"$1/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$ROOT/munge/socket
DbdHost=localhost
DbdAddr=$(ctl_addr)
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=ijepa-ci
StorageLoc=ijepa_slurm_acct
EOF
  chmod 600 "$1/slurmdbd.conf"
  {
    grep -vE '[[:space:]]n[0-9]+([[:space:]]|$)' /etc/hosts || true
    for i in $(seq "$NODES"); do echo "$(node_addr "$i") n$i"; done
  } >"$1/hosts"
}

pid_in() { [[ -s $1 ]] && tr -dc 0-9 <"$1"; }

# Alive and not a zombie (the init process here reaps orphans late).
running() {
  [[ -n ${1:-} && -r /proc/$1/stat ]] || return 1
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ $state != Z && $state != X ]]
}

healthy() {
  [[ -s $RUN/config.sha && $(cat "$RUN/config.sha") == "$1" ]] || return 1
  local f
  for f in munged mariadbd slurmdbd slurmctld $(seq -f 'slurmd-n%g' "$NODES"); do
    running "$(pid_in "$RUN/$f.pid")" || return 1
  done
  nodes_up
}

nodes_up() {  # every node answers (idle, mixed or allocated; not down/drained/unknown)
  local states
  states=$(timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
  [[ $(grep -cE ' (idle|mixed|allocated)$' <<<"$states") -eq $NODES ]]
}

start_munge() {
  mkdir -p "$ROOT/munge"
  chmod 755 "$ROOT/munge"
  if [[ ! -s $ROOT/munge/key ]]; then
    head -c 1024 /dev/urandom >"$ROOT/munge/key"
    chmod 400 "$ROOT/munge/key"
  fi
  detached munged --force --socket="$ROOT/munge/socket" --key-file="$ROOT/munge/key" \
    --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" --seed-file="$ROOT/munge/seed" ||
    fail "munged did not start (see $LOG/munged.log)"
  retry_for 10 sh -c "munge -S '$ROOT/munge/socket' -n | unmunge -S '$ROOT/munge/socket'" ||
    fail "munged does not answer on $ROOT/munge/socket"
}

start_network() {
  local br=${TAG}_br0 i ns
  ip link add "$br" type bridge || fail "cannot create bridge $br (left over? run stop.sh)"
  echo "$br" >"$RUN/bridge"
  ip addr add "$SUBNET.1/24" dev "$br"
  ip link set "$br" up
  for i in $(seq "$NODES"); do
    ns=${TAG}_n$i
    ip netns add "$ns" || fail "cannot create netns $ns (left over? run stop.sh)"
    echo "$ns" >>"$RUN/netns"
    ip link add "${TAG}_h$i" type veth peer name "${TAG}_c$i"
    ip link set "${TAG}_h$i" master "$br" up
    ip link set "${TAG}_c$i" netns "$ns"
    ip -n "$ns" link set "${TAG}_c$i" name eth0
    ip -n "$ns" addr add "$(node_addr "$i")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  done
}

sql() { mariadb --no-defaults -S "$ROOT/db/socket" -u root -N -B -e "$1"; }

start_accounting() {
  mkdir -p "$ROOT/db"
  if [[ ! -d $ROOT/db/data/mysql ]]; then
    mariadb-install-db --no-defaults --datadir="$ROOT/db/data" --user=root --skip-test-db \
      --auth-root-authentication-method=normal --skip-name-resolve >"$LOG/mariadb-init.log" 2>&1 ||
      fail "mariadb-install-db failed (see $LOG/mariadb-init.log)"
  fi
  # mariadbd stays in the foreground: setsid -f forks it into its own session and returns.
  detached setsid -f mariadbd --no-defaults --datadir="$ROOT/db/data" --socket="$ROOT/db/socket" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --user=root --pid-file="$RUN/mariadbd.pid" \
    --log-error="$LOG/mariadbd.log" --skip-name-resolve --innodb-buffer-pool-size=32M
  retry_for "$WAIT_S" sql "select 1" || fail "MariaDB did not come up (see $LOG/mariadbd.log)"
  sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'ijepa-ci';
       GRANT ALL ON ijepa_slurm_acct.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  detached slurmdbd || fail "slurmdbd did not start (see $LOG/slurmdbd.log)"
  retry_for "$WAIT_S" sacctmgr -n list cluster || fail "slurmdbd does not answer ($LOG/slurmdbd.log)"
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx ijepaci; then
    sacctmgr -i add cluster ijepaci >/dev/null
  fi
}

start_node() {  # $1 = node index
  local n=n$1 enter=()
  mkdir -p "$ROOT/spool/$n"
  # nsenter, not `ip netns exec`: the latter remounts /sys and slurmd then finds no cgroup fs.
  [[ $NET == netns ]] && enter=(nsenter "--net=/run/netns/${TAG}_n$1")
  detached "${enter[@]}" unshare --uts --mount --propagation private sh -c \
    "hostname $n && mount --bind '$ETC/hosts' /etc/hosts && exec slurmd -f '$SLURM_CONF' -N $n" ||
    fail "slurmd $n did not start (see $LOG/slurmd-$n.log)"
  retry_for 10 test -s "$RUN/slurmd-$n.pid" || fail "slurmd $n wrote no pid file"
  # stop.sh kills what is left in this UTS namespace (orphaned job steps).
  readlink "/proc/$(pid_in "$RUN/slurmd-$n.pid")/ns/uts" >"$RUN/$n.uts"
}

main() {
  [[ $(id -u) == 0 ]] || fail "needs root"
  [[ $NET == netns || $NET == uts ]] || fail "IJEPA_SLURM_NET must be netns or uts"
  mkdir -p "$ROOT" "$RUN" "$LOG" "$ROOT/state" "$ROOT/spool"
  install_missing
  if [[ $NET == netns ]]; then
    if ip link add "${TAG}_probe" type bridge 2>/dev/null; then
      ip link del "${TAG}_probe"
    else
      say "bridges are not permitted here: using IJEPA_SLURM_NET=uts"
      NET=uts
    fi
  fi
  rm -rf "$ROOT/etc.next"
  write_configs "$ROOT/etc.next"
  local sha
  sha=$(cat "$ROOT"/etc.next/* | sha256sum | cut -c1-16)
  if healthy "$sha"; then
    rm -rf "$ROOT/etc.next"
    say "already running"
    sinfo -N >&2
    return 0
  fi
  IJEPA_SLURM_ROOT=$ROOT bash "$HERE/stop.sh"
  rm -rf "$ETC" && mv "$ROOT/etc.next" "$ETC"
  local started=$SECONDS
  start_munge
  [[ $NET == netns ]] && start_network  # before slurmdbd, which listens on the bridge address
  start_accounting
  detached slurmctld -f "$SLURM_CONF" || fail "slurmctld did not start (see $LOG/slurmctld.log)"
  retry_for "$WAIT_S" scontrol ping || fail "slurmctld does not answer (see $LOG/slurmctld.log)"
  # Jobs recovered from the saved state have no processes left (stop.sh killed everything in
  # the node namespaces); left alone they would hold their CPUs as RUNNING ghosts.
  local stale
  stale=$(squeue -h -o %A | tr '\n' ' ')
  if [[ -n ${stale// /} ]]; then
    say "cancelling jobs left from the previous cluster: $stale"
    scancel $stale
  fi
  local i
  for i in $(seq "$NODES"); do start_node "$i"; done
  retry_for "$WAIT_S" nodes_up || {
    sinfo -N -l >&2 || true
    fail "nodes not up after ${WAIT_S}s (see $LOG/slurmctld.log)"
  }
  echo "$sha" >"$RUN/config.sha"
  printf 'export SLURM_CONF=%s\nexport IJEPA_SLURM_ROOT=%s\n' "$SLURM_CONF" "$ROOT" >"$ROOT/env.sh"
  say "up in $((SECONDS - started)) s: $NODES node(s), NET=$NET; source $ROOT/env.sh"
  sinfo -N -o '%N %T %c %m %o' >&2
}

main "$@"
