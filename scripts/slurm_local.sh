#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for testing cluster sweeps (`make test-slurm`).
#
#   scripts/slurm_local.sh start    # install Debian's SLURM/munge/MariaDB packages if missing, configure, start
#   scripts/slurm_local.sh status   # daemons, node and queue
#   scripts/slurm_local.sh stop     # cancel its jobs, stop every daemon it started, remove the folder
#
# Everything (slurm.conf, slurmdbd.conf, munge key and socket, database, state, spool, logs, pid files) lives in
# one temporary folder, SLURM_LOCAL_DIR (default ${TMPDIR:-/tmp}/adbench-slurm); nothing under /etc is changed.
# Clients find the cluster through SLURM_CONF: `export SLURM_CONF=$SLURM_LOCAL_DIR/slurm.conf` (start prints
# the line; tests/test_slurm.py looks there too). Runs as root (munged and slurmd need it). The node is this
# machine with its real CPUs and memory (`slurmd -C`), one partition `debug`, no GPUs, no cgroups (works in
# containers). Job accounting (slurmdbd on a private MariaDB) is on because submitit learns the state of a job
# that ended without a result (cancelled, killed, timed out) from `sacct`; without it a sweep would wait forever.
# KillWait=0: scancel kills a job at once (submitit ignores the SIGTERM that comes first, so with SLURM's usual
# 30 s grace a cancelled seconds-long test job could still finish).
# Ports: SLURM_LOCAL_PORT (default 6817) for slurmctld, +1 slurmd, +2 slurmdbd, +3 MariaDB (127.0.0.1 only).
set -euo pipefail

DIR="${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/adbench-slurm}"
PORT="${SLURM_LOCAL_PORT:-6817}"
CONF="$DIR/slurm.conf"
SOCKET="$DIR/munge/munge.socket"
DB_SOCKET="$DIR/run/mysql.sock"
CLUSTER="adbench-local"

die() { echo "slurm_local: $*" >&2; exit 1; }

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS COMMAND...: retry every 0.5 s until it succeeds
    local n=$(($1 * 2)) i
    shift
    for ((i = 0; i < n; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
    return 1
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install SLURM, munge and MariaDB"
    echo "slurm_local: installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } \
        || die "apt-get install ${missing[*]} failed"
}

write_conf() {
    # the node line as slurmd measures it: NodeName=<host> CPUs=.. Boards=.. ... RealMemory=..
    local node host
    node="$(slurmd -C | head -n 1)"
    host="$(hostname -s)"
    [[ "$node" == NodeName=* ]] || die "slurmd -C gave no node line: $node"
    cat >"$CONF" <<CONF_END
# written by scripts/slurm_local.sh: a one-node cluster on $host
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
AccountingStoragePass=$SOCKET
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
MpiDefault=none
ReturnToService=2
KillWait=0
MinJobAge=600
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF_END
    # slurmdbd reads slurmdbd.conf beside slurm.conf; it must be private
    cat >"$DIR/slurmdbd.conf" <<CONF_END
# written by scripts/slurm_local.sh
AuthType=auth/munge
AuthInfo=socket=$SOCKET
DbdHost=localhost
DbdPort=$((PORT + 2))
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
CONF_END
    chmod 600 "$DIR/slurmdbd.conf"
}

sql() { mariadb --no-defaults -S "$DB_SOCKET" -u root -e "$1"; }

start_database() {  # a private MariaDB on 127.0.0.1:PORT+3 holding slurmdbd's tables
    mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user=root --skip-test-db \
        >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $DIR/log/mariadb-install.log"
    setsid mariadbd --no-defaults --datadir="$DIR/mysql" --socket="$DB_SOCKET" --user=root \
        --bind-address=127.0.0.1 --port=$((PORT + 3)) --pid-file="$DIR/run/mariadbd.pid" \
        --log-error="$DIR/log/mariadbd.log" --innodb-buffer-pool-size=32M </dev/null >/dev/null 2>&1 &
    wait_for 60 sql "select 1" || die "MariaDB did not come up; see $DIR/log/mariadbd.log"
    sql "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS'; CREATE DATABASE slurm_acct_db;
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || die "could not create slurmdbd's database"
}

node_up() {
    local state
    state="$(sinfo -h -N -o %t 2>/dev/null | head -n 1)"
    [[ "$state" == idle || "$state" == mix || "$state" == alloc ]]
}

start() {
    [[ "$(id -u)" == 0 ]] || die "run as root (munged and slurmd need it): sudo $0 start"
    local name
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        pid_alive "$DIR/run/$name.pid" && die "already running in $DIR ($name); stop it first: $0 stop"
    done
    install_packages
    rm -rf "$DIR"
    # a failed start stops what it started and keeps the folder (its logs say why)
    trap 'echo "slurm_local: start failed; daemons stopped, logs kept in $DIR/log" >&2; stop_daemons' EXIT
    mkdir -p "$DIR"/{munge,state,spool,log,run,mysql}
    chmod 700 "$DIR" "$DIR/munge"
    DB_PASS="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    write_conf
    export SLURM_CONF="$CONF"
    # munge: a fresh key, the daemon bound to a socket in the folder
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge/munge.key"
    munged --force --key-file="$DIR/munge/munge.key" --socket="$SOCKET" --pid-file="$DIR/run/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
        || die "munged did not start; see $DIR/log/munged.log"
    munge -n -S "$SOCKET" | unmunge -S "$SOCKET" >/dev/null || die "munge round trip failed ($DIR/log/munged.log)"
    start_database
    slurmdbd || die "slurmdbd did not start; see $DIR/log/slurmdbd.log"
    wait_for 60 timeout 10 sacctmgr -n list cluster || die "slurmdbd does not answer; see $DIR/log/slurmdbd.log"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
    slurmctld -f "$CONF" || die "slurmctld did not start; see $DIR/log/slurmctld.log"
    slurmd -f "$CONF" || die "slurmd did not start; see $DIR/log/slurmd.log"
    wait_for 60 node_up || die "node not up after 60 s; see $DIR/log/slurmctld.log and slurmd.log"
    trap - EXIT
    sinfo -N -o "%N %P %t %c %m"
    echo "slurm_local: running in $DIR; use it with: export SLURM_CONF=$CONF"
}

stop_pid() {  # stop_pid NAME PIDFILE: TERM, wait up to 30 s, then KILL
    local name="$1" file="$2" pid i
    [[ -f "$file" ]] || return 0
    pid="$(cat "$file")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "slurm_local: $name ($pid) ignored TERM for 30 s, killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}

no_jobs() { [[ -z "$(squeue -h -o %A 2>/dev/null)" ]]; }

stop_daemons() {
    export SLURM_CONF="$CONF"
    if pid_alive "$DIR/run/slurmctld.pid" && ! no_jobs; then
        echo "slurm_local: cancelling the jobs still queued or running"
        squeue -h -o %A | sort -u | xargs -r scancel 2>/dev/null || true
        wait_for 60 no_jobs || echo "slurm_local: jobs still listed after 60 s" >&2
    fi
    stop_pid slurmd "$DIR/run/slurmd.pid"
    stop_pid slurmctld "$DIR/run/slurmctld.pid"
    stop_pid slurmdbd "$DIR/run/slurmdbd.pid"
    stop_pid mariadbd "$DIR/run/mariadbd.pid"
    stop_pid munged "$DIR/run/munged.pid"
}

stop() {
    [[ -d "$DIR" ]] || { echo "slurm_local: not running ($DIR absent)"; return 0; }
    stop_daemons
    rm -rf "$DIR"
    echo "slurm_local: stopped"
}

status() {
    [[ -d "$DIR" ]] || { echo "slurm_local: not running ($DIR absent)"; return 3; }
    local name rc=0
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        if pid_alive "$DIR/run/$name.pid"; then echo "$name: running (pid $(cat "$DIR/run/$name.pid"))"
        else echo "$name: not running"; rc=3; fi
    done
    if ((rc == 0)); then
        SLURM_CONF="$CONF" sinfo -N -o "%N %P %t %c %m"
        SLURM_CONF="$CONF" squeue
    fi
    echo "SLURM_CONF=$CONF"
    return "$rc"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status   (folder: SLURM_LOCAL_DIR=$DIR)" >&2; exit 2 ;;
esac
