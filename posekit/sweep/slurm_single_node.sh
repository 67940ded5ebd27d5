#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on this machine (munged + slurmctld + slurmd), for testing
# `hydra/launcher=slurm` for real: tests/test_slurm.py brings it up, submits a sweep and takes it down.
# Adapted from a recipe tested on Debian 12 (SLURM 22.05, no systemd, root, 2 vCPU); see docs/slurm.md.
#
#   bash posekit/sweep/slurm_single_node.sh up       # install (apt, if needed), configure, start; wait until idle
#   bash posekit/sweep/slurm_single_node.sh down     # stop the daemons THIS script started (by PID), nothing else
#   bash posekit/sweep/slurm_single_node.sh status   # sinfo / squeue of this cluster
#   export SLURM_CONF=/tmp/posekit-slurm/etc/slurm.conf   # what sbatch/srun/submitit need (printed by `up`)
#
# Exit status of `up`: 0 ready; 3 the packages cannot be installed (no root, no apt, no network); 1 any other
# failure (daemon logs: $SLURM_ROOT/log/). The test turns 3 into a skip that names the reason.
#
# Environment:
#   SLURM_ROOT=/tmp/posekit-slurm     conf, state, spool, logs and pid files (munge keeps /etc/munge, /run/munge)
#   SLURMCTLD_PORT=6817 SLURMD_PORT=6818   change them if another cluster runs on this machine
#   WITH_DBD=1     also MariaDB + slurmdbd so `sacct` works. Without it submitit logs "Bypassing sacct error"
#                  on each poll and falls back to its result files: fine for a test; slower to set up (~+60 s)
#   WITH_CGROUP=1  proctrack/cgroup + task/cgroup (cgroup v1): real CPU/memory limits (default: no enforcement)
set -euo pipefail

SLURM_ROOT=${SLURM_ROOT:-/tmp/posekit-slurm}
NODE=${NODE:-localhost}
PARTITION=${PARTITION:-debug}
SLURMCTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
WITH_DBD=${WITH_DBD:-0}
WITH_CGROUP=${WITH_CGROUP:-0}
export SLURM_CONF=$SLURM_ROOT/etc/slurm.conf
DB=$SLURM_ROOT/mysql
STARTED=$SLURM_ROOT/run/started   # one pidfile path per line: the daemons this script started

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
remember() { mkdir -p "$SLURM_ROOT/run"; grep -qxF "$1" "$STARTED" 2>/dev/null || echo "$1" >>"$STARTED"; }

stop_pid() {  # stop one daemon by the PID in its pidfile (never by name)
  local f=$1 p
  [[ -s $f ]] || return 0
  p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null; then
    kill "$p"
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && kill -9 "$p" || true
    echo "stopped $(basename "$f" .pid) (pid $p)"
  fi
  rm -f "$f"
}

wait_for() {  # wait_for <tries x 0.2 s> <cmd...>
  local n=$1; shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

down() {
  [[ -f $SLURM_CONF ]] && command -v scancel >/dev/null && scancel --user="$(id -un)" 2>/dev/null || true
  if [[ -f $STARTED ]]; then
    # reverse start order: slurmd, slurmctld, slurmdbd, mysqld, munged
    tac "$STARTED" | while read -r f; do stop_pid "$f"; done
    rm -f "$STARTED"
  fi
}

status() {
  sinfo && squeue
}

install_packages() {
  local pkgs="slurm-wlm munge" missing=0
  [[ $WITH_DBD == 1 ]] && pkgs="$pkgs slurmdbd mariadb-server"
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing=1; done
  [[ $missing == 0 ]] && return 0
  if [[ $(id -u) != 0 ]]; then echo "cannot install $pkgs: not root" >&2; exit 3; fi
  command -v apt-get >/dev/null || { echo "cannot install $pkgs: no apt-get (not Debian/Ubuntu)" >&2; exit 3; }
  # postinst prints "invoke-rc.d: policy-rc.d denied execution of start" without systemd: harmless
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkgs; } >"$SLURM_ROOT/apt.log" 2>&1; then
    echo "cannot install $pkgs with apt-get (see $SLURM_ROOT/apt.log): $(tail -n 2 "$SLURM_ROOT/apt.log" | tr '\n' ' ')" >&2
    exit 3
  fi
}

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
  chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key; chmod 755 /run/munge
  if ! alive /run/munge/munged.pid; then   # one already running (another cluster, the system's) is reused
    runuser -u munge -- /usr/sbin/munged   # forks; pidfile /run/munge/munged.pid
    remember /run/munge/munged.pid
  fi
  wait_for 50 bash -c 'munge -n </dev/null | unmunge'
  munge -n </dev/null | unmunge | grep -q 'STATUS: *Success' || { echo "munge self-test failed" >&2; exit 1; }
}

write_config() {
  # node topology as slurmd detects it (avoids "Node reconfigured socket/core boundaries")
  read -r NCPU BOARDS SPB CPS TPC < <(slurmd -C | awk '/^NodeName/{for(i=1;i<=NF;i++){split($i,a,"=");v[a[1]]=a[2]}
    print v["CPUs"],v["Boards"],v["SocketsPerBoard"],v["CoresPerSocket"],v["ThreadsPerCore"]}')
  local mem_total realmem acct pt
  mem_total=$(free -m | awk '/^Mem:/{print $2}')
  realmem=$(( mem_total - 2048 ))   # must not exceed what slurmd detects, else the node goes INVAL
  if [[ $WITH_DBD == 1 ]]; then
    acct=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStoragePort=6819'
  else
    acct="AccountingStorageType=accounting_storage/none"
  fi
  if [[ $WITH_CGROUP == 1 ]]; then
    pt=$'ProctrackType=proctrack/cgroup\nTaskPlugin=task/cgroup,task/affinity'
    printf 'CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\nConstrainCores=yes\nConstrainRAMSpace=yes\n' \
      >"$SLURM_ROOT/etc/cgroup.conf"
  else
    pt=$'ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none'
    rm -f "$SLURM_ROOT/etc/cgroup.conf"
  fi
  cat >"$SLURM_CONF" <<EOF
ClusterName=posekit
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
$pt
JobAcctGatherType=jobacct_gather/none
$acct
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldPidFile=$SLURM_ROOT/run/slurmctld.pid
SlurmdPidFile=$SLURM_ROOT/run/slurmd.pid
SlurmctldLogFile=$SLURM_ROOT/log/slurmctld.log
SlurmdLogFile=$SLURM_ROOT/log/slurmd.log
StateSaveLocation=$SLURM_ROOT/state
SlurmdSpoolDir=$SLURM_ROOT/spool
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
DefMemPerCPU=1024
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NCPU Boards=$BOARDS SocketsPerBoard=$SPB CoresPerSocket=$CPS ThreadsPerCore=$TPC RealMemory=$realmem State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start_dbd() {  # MariaDB (own datadir, 127.0.0.1:3306) + slurmdbd, so sacct works
  mkdir -p "$DB/data" "$DB/run"; chown -R mysql:mysql "$DB"
  if [[ ! -d $DB/data/mysql ]]; then
    mariadb-install-db --user=mysql --datadir="$DB/data" --auth-root-authentication-method=socket --skip-test-db \
      >"$DB/install.log" 2>&1
  fi
  if ! alive "$DB/run/mysqld.pid"; then
    setsid mariadbd --user=mysql --datadir="$DB/data" --socket="$DB/run/mysqld.sock" --pid-file="$DB/run/mysqld.pid" \
      --bind-address=127.0.0.1 --port=3306 --skip-name-resolve --log-error="$DB/mysqld.err" \
      --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
    remember "$DB/run/mysqld.pid"
  fi
  wait_for 150 mariadb -S "$DB/run/mysqld.sock" -e 'select 1' || { echo "mariadb did not start" >&2; exit 1; }
  mariadb -S "$DB/run/mysqld.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  cat >"$SLURM_ROOT/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$SLURM_ROOT/run/slurmdbd.pid
LogFile=$SLURM_ROOT/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$SLURM_ROOT/etc/slurmdbd.conf"   # slurmdbd refuses a world-readable one; it is found next to SLURM_CONF
  if ! alive "$SLURM_ROOT/run/slurmdbd.pid"; then
    slurmdbd
    remember "$SLURM_ROOT/run/slurmdbd.pid"
  fi
  wait_for 150 sacctmgr -n list cluster || { echo "slurmdbd did not answer" >&2; exit 1; }
  sacctmgr -n list cluster format=cluster | grep -qw posekit || sacctmgr -i add cluster posekit >/dev/null
}

up() {
  local t0 t_pkg t_conf t1
  t0=$(now)
  mkdir -p "$SLURM_ROOT"/{etc,run,log,state,spool}
  chmod 755 "$SLURM_ROOT" "$SLURM_ROOT"/{etc,run,log,state,spool}
  install_packages
  t_pkg=$(now)
  if [[ $(id -u) != 0 ]]; then echo "the single-node cluster runs its daemons as root; run as root" >&2; exit 3; fi
  start_munge
  write_config
  [[ $WITH_DBD == 1 ]] && start_dbd
  t_conf=$(now)
  # no systemd: the daemons fork themselves; -i ignores stale state, -N pins the node name
  stop_pid "$SLURM_ROOT/run/slurmd.pid"; stop_pid "$SLURM_ROOT/run/slurmctld.pid"
  slurmctld -i; remember "$SLURM_ROOT/run/slurmctld.pid"
  slurmd -N "$NODE"; remember "$SLURM_ROOT/run/slurmd.pid"
  if ! wait_for 150 bash -c "[[ \$(sinfo -h -N -n $NODE -o %t) == idle ]]"; then
    sinfo -R || true
    echo "node $NODE did not become idle; logs: $SLURM_ROOT/log/" >&2
    exit 1
  fi
  t1=$(now)
  sinfo
  echo "timings: packages $(elapsed "$t0" "$t_pkg") s, munge+config $(elapsed "$t_pkg" "$t_conf") s," \
    "slurmctld+slurmd to idle $(elapsed "$t_conf" "$t1") s, total $(elapsed "$t0" "$t1") s"
  echo "export SLURM_CONF=$SLURM_CONF"
}

case ${1:-up} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
