#!/usr/bin/env bash
# Bring up a real single-node Slurm cluster on localhost, for tests and local runs.
#
#   slurm/local-cluster/start.sh          # install if needed, start, wait until usable
#   slurm/local-cluster/stop.sh           # stop what this script started
#
# Daemons: munged, a private mariadbd (accounting DB), slurmdbd, slurmctld, slurmd.
# All their state, spool, pid, log and config files live under one base directory:
#   ${AVBERT_SLURM_BASE:-<repo>/slurm/local-cluster/state}   (git-ignored)
# The exceptions are munge's own files (key in /etc/munge, socket and pid in /run/munge, log
# and seed in /var/{log,lib}/munge: every Slurm client looks for the socket there by
# default) and a copy of slurm.conf (+ cgroup.conf) in /etc/slurm, so
# that plain `sbatch`/`squeue`/`sacct` work for every process without SLURM_CONF. The copy
# carries a marker line; a /etc/slurm/slurm.conf without it is never overwritten (we then
# print the SLURM_CONF to export instead).
#
# Idempotent: daemons already running from this base (by pid file) are left alone, unless
# their generated config changed, in which case they are restarted.
#
# Env overrides: AVBERT_SLURM_BASE, AVBERT_SLURM_DB_PORT (default 3316),
#                AVBERT_SLURM_CLUSTER (default avbert).
# Tested with Slurm 22.05 (Debian 12): slurmctld, slurmd and slurmdbd on localhost.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$SCRIPT_DIR/common.sh"

T_START=$(date +%s.%N)
DB_PORT="${AVBERT_SLURM_DB_PORT:-3316}"
CLUSTER="${AVBERT_SLURM_CLUSTER:-avbert}"
PARTITION=local

[[ $(id -u) -eq 0 ]] || die "must run as root (the cluster runs SlurmUser=root)"

# One cluster per machine (fixed Slurm ports, one /etc/slurm): refuse to start a second one
# from another base directory while the one that /etc/slurm/slurm.conf points at runs.
if [[ -f /etc/slurm/slurm.conf ]] && grep -qxF "$CONF_MARKER" /etc/slurm/slurm.conf; then
    other_pidfile=$(sed -n 's/^SlurmctldPidFile=//p' /etc/slurm/slurm.conf)
    if [[ -n $other_pidfile && $other_pidfile != "$BASE/run/slurmctld.pid" ]] \
        && pid_alive slurmctld "$other_pidfile"; then
        die "a local cluster from base $(dirname "$(dirname "$other_pidfile")") is running; stop it first (AVBERT_SLURM_BASE=that-dir $SCRIPT_DIR/stop.sh)"
    fi
fi

# ---------------------------------------------------------------------------------------
# 1. Packages (skipped entirely when every binary is already there)
# ---------------------------------------------------------------------------------------
need_install=0
for bin in slurmctld slurmd slurmdbd sbatch sacct sacctmgr munged mariadbd mariadb-install-db mariadb; do
    command -v "$bin" >/dev/null 2>&1 || need_install=1
done
if [[ $need_install -eq 1 ]]; then
    log "installing slurm, munge and mariadb from Debian packages"
    # A policy-rc.d that exits 101 forbids maintainer scripts from starting services: we
    # start our own daemons with our own config. Restore whatever was there before.
    policy=/usr/sbin/policy-rc.d
    policy_backup=""
    if [[ -e $policy ]]; then
        policy_backup=$(mktemp)
        cp -p "$policy" "$policy_backup"
    fi
    restore_policy() {
        if [[ -n $policy_backup ]]; then mv -f "$policy_backup" "$policy"; else rm -f "$policy"; fi
    }
    trap restore_policy EXIT
    printf '#!/bin/sh\n# written by avbert slurm/local-cluster/start.sh during apt-get install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    export DEBIAN_FRONTEND=noninteractive
    mkdir -p "$BASE/log"
    apt-get update -qq >"$BASE/log/apt.log" 2>&1 || die_log "apt-get update failed" "$BASE/log/apt.log"
    apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge slurmdbd mariadb-server mariadb-client \
        >>"$BASE/log/apt.log" 2>&1 || die_log "apt-get install failed" "$BASE/log/apt.log"
    restore_policy
    trap - EXIT
    hash -r
fi

# ---------------------------------------------------------------------------------------
# 2. Layout and configuration
# ---------------------------------------------------------------------------------------
mkdir -p "$BASE"/{etc,log,run,spool/slurmctld,spool/slurmd,mysql}
chmod 755 "$BASE" "$BASE"/{etc,log,run,spool}
HOST=$(hostname -s)
[[ -n $HOST ]] || die "hostname -s is empty"

# Node hardware as slurmd itself sees it, so the node never drains on a mismatch. Keep the
# topology fields (CPUs, Boards, Sockets, Cores, Threads) verbatim; RealMemory becomes ~90%.
hw=$(slurmd -C 2>/dev/null | head -n1) || die "slurmd -C failed"
NODE_TOPO=$(tr ' ' '\n' <<<"$hw" | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')
CPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
MEM_TOTAL=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
[[ -n $CPUS && -n $MEM_TOTAL ]] || die "could not parse 'slurmd -C' output: $hw"
REAL_MEM=$(( MEM_TOTAL * 9 / 10 ))
# Default memory for jobs that ask none: 2 GB per CPU, capped so all CPUs fit in RealMemory.
DEF_MEM_PER_CPU=$(( REAL_MEM / CPUS < 2048 ? REAL_MEM / CPUS : 2048 ))

# Password of the private DB's `slurm` user: random once, then kept (mode 600).
if [[ ! -s $BASE/etc/db_password ]]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$BASE/etc/db_password")
fi
DB_PASS=$(cat "$BASE/etc/db_password")

changed_ctld=0   # slurm.conf/cgroup.conf changed -> restart slurmctld + slurmd if running
changed_dbd=0    # slurmdbd.conf changed -> restart slurmdbd if running

# write_if_changed FILE MODE: read new content on stdin; return 0 if the file changed.
write_if_changed() {
    local file=$1 mode=$2 tmp
    tmp=$(mktemp "$file.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$file"
    return 0
}

if write_if_changed "$BASE/etc/slurm.conf" 644 <<EOF
$CONF_MARKER
# Generated by slurm/local-cluster/start.sh; base directory $BASE. Do not edit: rewritten on start.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Short credential lifetime: a requeued job restarts in ~20 s instead of ~2 min.
AuthInfo=cred_expire=10
StateSaveLocation=$BASE/spool/slurmctld
SlurmdSpoolDir=$BASE/spool/slurmd
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroup tree to manage processes in here: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
# A node that went DOWN (e.g. slurmd restarted) returns as soon as it registers again.
ReturnToService=2
MailProg=/bin/true
SchedulerParameters=bf_interval=1
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=127.0.0.1 ${NODE_TOPO}RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
then changed_ctld=1; fi

# Slurm 22.05 always loads a cgroup plugin, even with proctrack/linuxproc + task/none.
if write_if_changed "$BASE/etc/cgroup.conf" 644 <<EOF
$CONF_MARKER
CgroupPlugin=autodetect
IgnoreSystemd=yes
EOF
then changed_ctld=1; fi

# slurmdbd refuses a slurmdbd.conf readable by others (it holds the DB password).
if write_if_changed "$BASE/etc/slurmdbd.conf" 600 <<EOF
$CONF_MARKER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
DebugLevel=info
LogFile=$BASE/log/slurmdbd.log
PidFile=$BASE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
then changed_dbd=1; fi

# Copy slurm.conf and cgroup.conf where the Debian tools look by default, unless a foreign
# (unmarked) config is already there. Record what we wrote, for stop.sh --purge.
export_hint=""
mkdir -p /etc/slurm
if [[ ! -e /etc/slurm/slurm.conf ]] || grep -qxF "$CONF_MARKER" /etc/slurm/slurm.conf; then
    for f in slurm.conf cgroup.conf; do
        if [[ ! -e /etc/slurm/$f ]] || grep -qxF "$CONF_MARKER" "/etc/slurm/$f"; then
            if ! cmp -s "$BASE/etc/$f" "/etc/slurm/$f"; then cp -f "$BASE/etc/$f" "/etc/slurm/$f"; fi
            grep -qxF "/etc/slurm/$f" "$BASE/etc/wrote-etc-slurm" 2>/dev/null \
                || echo "/etc/slurm/$f" >>"$BASE/etc/wrote-etc-slurm"
        fi
    done
else
    warn "/etc/slurm/slurm.conf exists and was not written by this script: leaving it alone"
    export_hint="export SLURM_CONF=$BASE/etc/slurm.conf"
fi
# The daemons always read the copies in the base directory (slurmdbd and slurmd look for
# slurmdbd.conf / cgroup.conf next to SLURM_CONF), so they never depend on /etc/slurm.
export SLURM_CONF="$BASE/etc/slurm.conf"

# ---------------------------------------------------------------------------------------
# 3. Daemons
# ---------------------------------------------------------------------------------------

# --- munge: package-created key in /etc/munge, default socket in /run/munge ----------------
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
    else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
if pid_alive munged "$BASE/run/munged.pid"; then
    munge_ok || die "munged (pid $(cat "$BASE/run/munged.pid")) is running but does not answer"
elif munge_ok; then
    # Someone else's munged (not started from this base): use it, never stop it.
    log "using an already running munged that this script did not start"
else
    rm -f "$BASE/run/munged.pid"
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    log "starting munged"
    # --force: take over a stale socket left by a munged that died.
    runuser -u munge -- munged --force || die_log "munged failed to start" /var/log/munge/munged.log
    wait_for 10 "munge to answer" munge_ok || die_log "munged does not answer" /var/log/munge/munged.log
    # munged writes its own pid file as user munge in /run/munge; keep a root-owned record
    # in the base directory so stop.sh stops exactly this process.
    cp /run/munge/munged.pid "$BASE/run/munged.pid"
fi

# --- private mariadbd for slurmdbd: own datadir/socket/port, no /etc/mysql config ----------
DB_DIR="$BASE/mysql"
DB_SOCK="$DB_DIR/mariadbd.sock"
db_root() { mariadb --no-defaults --protocol=socket -S "$DB_SOCK" -u root "$@"; }
db_ok() { mariadb-admin --no-defaults --protocol=socket -S "$DB_SOCK" -u root ping >/dev/null 2>&1; }
if pid_alive mariadbd "$BASE/run/mariadbd.pid"; then
    :
else
    rm -f "$BASE/run/mariadbd.pid" "$DB_SOCK"
    if [[ ! -d $DB_DIR/data/mysql ]]; then
        log "initialising the accounting database in $DB_DIR/data"
        rm -rf "$DB_DIR/data"
        mariadb-install-db --no-defaults --user=root --datadir="$DB_DIR/data" \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$BASE/log/mariadb-install-db.log" 2>&1 \
            || die_log "mariadb-install-db failed" "$BASE/log/mariadb-install-db.log"
    fi
    log "starting mariadbd on 127.0.0.1:$DB_PORT"
    # setsid + closed stdio: mariadbd does not daemonize itself and must outlive this shell.
    # slurmdbd logs an error unless innodb_lock_wait_timeout and the buffer pool are at least
    # half its recommendations (900 s, 1 GiB); InnoDB commits the pool's memory lazily.
    setsid mariadbd --no-defaults --user=root --datadir="$DB_DIR/data" \
        --socket="$DB_SOCK" --port="$DB_PORT" --bind-address=127.0.0.1 \
        --pid-file="$BASE/run/mariadbd.pid" --log-error="$BASE/log/mariadbd.log" \
        --innodb-buffer-pool-size=512M --innodb-log-file-size=64M \
        --innodb-lock-wait-timeout=900 --skip-name-resolve \
        </dev/null >>"$BASE/log/mariadbd.log" 2>&1 &
    mariadbd_pid=$!
    # Stop waiting early if mariadbd exits (e.g. port in use).
    db_up_or_dead() { db_ok || ! kill -0 "$mariadbd_pid" 2>/dev/null; }
    wait_for 60 "mariadbd to accept connections" db_up_or_dead && db_ok \
        || die_log "mariadbd did not start" "$BASE/log/mariadbd.log"
fi
# The slurm DB user, (re)created idempotently with the current password. With
# --skip-name-resolve a TCP client from 127.0.0.1 matches 'slurm'@'127.0.0.1'.
db_root -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
    ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
    FLUSH PRIVILEGES;" || die_log "could not create the slurm DB user" "$BASE/log/mariadbd.log"

# --- slurmdbd ---------------------------------------------------------------------------------
dbd_ok() { sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1; }
if pid_alive slurmdbd "$BASE/run/slurmdbd.pid" && [[ $changed_dbd -eq 1 ]]; then
    log "slurmdbd.conf changed: restarting slurmdbd"
    stop_pidfile slurmdbd "$BASE/run/slurmdbd.pid"
fi
if ! pid_alive slurmdbd "$BASE/run/slurmdbd.pid"; then
    rm -f "$BASE/run/slurmdbd.pid"
    log "starting slurmdbd"
    slurmdbd </dev/null >>"$BASE/log/slurmdbd.log" 2>&1 || die_log "slurmdbd failed to start" "$BASE/log/slurmdbd.log"
fi
# The first start creates the schema, which takes a few seconds.
wait_for 60 "slurmdbd to answer" up_or_dead slurmdbd "$BASE/run/slurmdbd.pid" dbd_ok && dbd_ok \
    || die_log "slurmdbd does not answer" "$BASE/log/slurmdbd.log"

# Register the cluster before slurmctld connects (adding it also creates the `root`
# account and root's association, which is all sacct needs to show jobs).
if ! sacctmgr -n -P show cluster format=cluster | grep -qxF "$CLUSTER"; then
    log "registering cluster '$CLUSTER' in slurmdbd"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die_log "sacctmgr add cluster failed" "$BASE/log/slurmdbd.log"
fi

# --- slurmctld and slurmd --------------------------------------------------------------------
if [[ $changed_ctld -eq 1 ]]; then
    for d in slurmd slurmctld; do
        if pid_alive "$d" "$BASE/run/$d.pid"; then
            log "slurm.conf changed: restarting $d"
            stop_pidfile "$d" "$BASE/run/$d.pid"
        fi
    done
fi
ctld_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
if ! pid_alive slurmctld "$BASE/run/slurmctld.pid"; then
    rm -f "$BASE/run/slurmctld.pid"
    log "starting slurmctld"
    slurmctld </dev/null >>"$BASE/log/slurmctld.log" 2>&1 || die_log "slurmctld failed to start" "$BASE/log/slurmctld.log"
fi
wait_for 30 "slurmctld to answer" up_or_dead slurmctld "$BASE/run/slurmctld.pid" ctld_ok && ctld_ok \
    || die_log "slurmctld does not answer" "$BASE/log/slurmctld.log"

if ! pid_alive slurmd "$BASE/run/slurmd.pid"; then
    rm -f "$BASE/run/slurmd.pid"
    log "starting slurmd"
    slurmd </dev/null >>"$BASE/log/slurmd.log" 2>&1 || die_log "slurmd failed to start" "$BASE/log/slurmd.log"
fi

# --- wait until usable ----------------------------------------------------------------------
node_state() { sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -n1; }
node_usable() {
    local s
    s=$(node_state)
    case $s in
        idle|mixed|allocated|completing) return 0 ;;
        # A node left drained/down by an earlier run (e.g. a killed slurmd) is put back.
        drain*|down*|fail*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true; return 1 ;;
        *) return 1 ;;
    esac
}
wait_for 30 "node $HOST to be idle" up_or_dead slurmd "$BASE/run/slurmd.pid" node_usable && node_usable \
    || die_log "node $HOST is not usable (state: $(node_state); reason: $(sinfo -h -n "$HOST" -o '%E' 2>/dev/null))" "$BASE/log/slurmd.log"
sacct_ok() { sacct -n -X -S now-1hour -o JobID >/dev/null 2>&1; }
wait_for 30 "sacct to answer" sacct_ok || die_log "sacct does not answer" "$BASE/log/slurmdbd.log"

T_END=$(date +%s.%N)
elapsed=$(awk -v a="$T_START" -v b="$T_END" 'BEGIN { printf "%.1f", b - a }')
cat <<EOF
[local-cluster] Slurm cluster '$CLUSTER' is up (${elapsed}s): node $HOST, $CPUS CPUs, RealMemory=${REAL_MEM}M, partition '$PARTITION' (default).
  base directory : $BASE   (logs in log/, configs in etc/)
  submit         : sbatch -p $PARTITION --wrap 'hostname'   |  squeue  |  sacct -X
  submitit       : submitit.AutoExecutor(folder=...) picks slurm; or use slurm/profiles/local.yaml
  stop           : $SCRIPT_DIR/stop.sh
EOF
if [[ -n $export_hint ]]; then
    echo "  NOTE: clients need: $export_hint"
else
    echo "  config         : /etc/slurm/slurm.conf (written by this script), so no env var is needed"
fi
