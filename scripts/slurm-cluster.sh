#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for fedgrid's tests and for trying the `slurm`
# site kind by hand: munge, slurmctld and slurmd, started without systemd.
#
#   scripts/slurm-cluster.sh start    install (apt, as root) if needed, configure, start; idempotent
#   scripts/slurm-cluster.sh stop     stop the daemons by their PIDs
#   scripts/slurm-cluster.sh status   exit 0 when the controller answers and the node takes jobs
#
# Why by hand: containers and CI machines have no systemd, and the packages' scripts cannot start
# services there. No cgroups, no accounting database: proctrack/linuxproc, task/none and no
# accounting, so it runs wherever root can run daemons. Configuration in /etc/slurm/slurm.conf;
# logs in /var/log/slurm.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
LOGS=/var/log/slurm

say() { echo "slurm-cluster: $*" >&2; }

running() {  # pid file -> true when its process is alive (a zombie does not count)
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat")" != "Z" ]
}

ready() {
  scontrol ping 2>/dev/null | grep -q "is UP" || return 1
  sinfo -h -N -o "%t" 2>/dev/null | grep -Eq "^(idle|mix|alloc)"
}

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
  [ "$(id -u)" = 0 ] || { say "slurm-wlm and munge are not installed and this is not root"; exit 2; }
  say "installing slurm-wlm and munge (apt)"
  # a fresh machine's package lists may be empty
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null 2>&1
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  }
}

topology() {  # Sockets/CoresPerSocket/ThreadsPerCore as slurmd itself sees them (CPUs= alone warns)
  slurmd -C | head -1 | tr ' ' '\n' | grep -E "^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=" | tr '\n' ' '
}

configure() {
  local host mem
  host=$(hostname -s)
  mem=$(( $(free -m | awk '/^Mem:/ {print $2}') * 9 / 10 ))
  mkdir -p /etc/slurm "$LOGS" /var/spool/slurmctld /var/spool/slurmd /run/munge
  cat >"$CONF" <<EOF
# written by fedgrid's scripts/slurm-cluster.sh
ClusterName=fedgrid
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# finished jobs stay visible to squeue -t all for 5 minutes (fedgrid reads their final state)
MinJobAge=300
# a job at its time limit gets SIGTERM, then SIGKILL 5 s later
KillWait=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOGS}/slurmctld.log
SlurmdLogFile=${LOGS}/slurmd.log
NodeName=${host} NodeAddr=127.0.0.1 $(topology) RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key /run/munge
  chmod 0400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
  say "munged did not start"; exit 1
}

start() {
  if ready; then say "already running"; return; fi
  install
  [ "$(id -u)" = 0 ] || { say "starting the daemons needs root"; exit 2; }
  configure
  start_munge
  running /run/slurmctld.pid || slurmctld -c
  running /run/slurmd.pid || slurmd
  for _ in $(seq 100); do
    if ready; then say "up: $(sinfo -h -o '%P %a %D %t' | head -1)"; return; fi
    sleep 0.2
  done
  say "the cluster did not come up; see $LOGS"; tail -5 "$LOGS"/*.log >&2 || true; exit 1
}

stop_pid() {  # pid file: SIGTERM, wait until it is gone (zombies count as gone), SIGKILL after 10 s
  running "$1" || { rm -f "$1"; return 0; }
  local pid
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do running "$1" || { rm -f "$1"; return 0; }; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}

stop() {
  stop_pid /run/slurmd.pid
  stop_pid /run/slurmctld.pid
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) ready ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
