#!/usr/bin/env bash
# Bring up a real Slurm cluster on localhost, for tests and local runs: one node by default,
# or N nodes in network namespaces (--nodes N).
#
#   slurm/local-cluster/start.sh             # install if needed, start, wait until usable
#   slurm/local-cluster/start.sh --nodes 2   # two nodes, each in its own network namespace
#   slurm/local-cluster/stop.sh              # stop what this script started
#
# Daemons: munged, a private mariadbd (accounting DB), slurmdbd, slurmctld, slurmd.
#
# --nodes N (N >= 2): N slurmd daemons named avbert-node1..N instead of the one on the host.
# Each runs in its own network namespace (named like the node) and UTS namespace (hostname =
# node name), so a job's ranks on different nodes see different hosts and talk over a network,
# as on a real cluster. Each namespace has a veth link to the host bridge avbert-br0, which
# holds $AVBERT_SLURM_NET.1 (default 10.213.0.1, slurmctld's address); node i has
# $AVBERT_SLURM_NET.(i+1). Only this machine's namespaces use the range: nothing is routed.
# The node names resolve everywhere through marked lines in /etc/hosts (gloo's rendezvous
# resolves the first node of the job's node list). munged, slurmdbd and slurmctld stay on the
# host; the namespaced slurmd reach munge through its socket in /run/munge. The partition holds
# every node; each node offers the whole machine's CPUs (the nodes share them). Switching
# between 1 and N nodes restarts slurmctld and the slurmd daemons and removes what the other
# mode made; stop.sh removes the namespaces, links, bridge and /etc/hosts lines.
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
#                AVBERT_SLURM_CLUSTER (default avbert),
#                AVBERT_SLURM_NET (--nodes N only: the first three octets of the /24 the node
#                namespaces use, default 10.213.0).
# Tested with Slurm 22.05 (Debian 12): slurmctld, slurmd and slurmdbd on localhost.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$SCRIPT_DIR/common.sh"

T_START=$(date +%s.%N)
DB_PORT="${AVBERT_SLURM_DB_PORT:-3316}"
CLUSTER="${AVBERT_SLURM_CLUSTER:-avbert}"
PARTITION=local
MAX_NODES=16

usage() { die "usage: $0 [--nodes N]   (N from 1 to $MAX_NODES; default 1)"; }
NNODES=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --nodes) [[ $# -ge 2 ]] || usage; NNODES=$2; shift 2 ;;
        --nodes=*) NNODES=${1#--nodes=}; shift ;;
        *) usage ;;
    esac
done
if ! [[ $NNODES =~ ^[0-9]+$ ]] || (( 10#$NNODES < 1 || 10#$NNODES > MAX_NODES )); then usage; fi
NNODES=$((10#$NNODES))

[[ $(id -u) -eq 0 ]] || die "must run as root (the cluster runs SlurmUser=root)"

if (( NNODES > 1 )); then
    if ! [[ $NODE_NET =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] \
        || (( 10#${BASH_REMATCH[1]} > 255 || 10#${BASH_REMATCH[2]} > 255 || 10#${BASH_REMATCH[3]} > 255 )); then
        die "AVBERT_SLURM_NET='$NODE_NET' is not the first three octets of a /24 (e.g. 10.213.0)"
    fi
    for bin in ip nsenter unshare hostname; do
        command -v "$bin" >/dev/null 2>&1 || die "--nodes $NNODES needs '$bin' (iproute2 / util-linux), which is not on PATH"
    done
fi

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

# The compute nodes: the host itself, or NNODES namespaced nodes with their addresses.
NODES=()
declare -A NODE_ADDR=()
if (( NNODES == 1 )); then
    NODES=("$HOST")
    NODE_ADDR[$HOST]=127.0.0.1
    CTLD_ADDR=127.0.0.1
else
    for ((i = 1; i <= NNODES; i++)); do
        NODES+=("$NODE_PREFIX$i")
        NODE_ADDR[$NODE_PREFIX$i]="$NODE_NET.$((i + 1))"
        mkdir -p "$BASE/spool/slurmd-$NODE_PREFIX$i"
    done
    CTLD_ADDR="$NODE_NET.1"
fi

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

# One slurmd per node: with several nodes their spool, pid and log files carry the node name
# (slurmd replaces %n with it).
if (( NNODES == 1 )); then SLURMD_SUFFIX=""; else SLURMD_SUFFIX="-%n"; fi
node_lines() {
    local node
    for node in "${NODES[@]}"; do
        echo "NodeName=$node NodeAddr=${NODE_ADDR[$node]} ${NODE_TOPO}RealMemory=$REAL_MEM State=UNKNOWN"
    done
}
NODE_LIST=$(IFS=,; echo "${NODES[*]}")

# Switching between 1 and N nodes removes the running nodes from the cluster, and with them
# any job on them: refuse while the running cluster has jobs queued or running.
old_nodes=$(sed -n 's/^PartitionName=.* Nodes=\([^ ]*\) .*/\1/p' "$BASE/etc/slurm.conf" 2>/dev/null || true)
if [[ -n $old_nodes && $old_nodes != "$NODE_LIST" ]] && pid_alive slurmctld "$BASE/run/slurmctld.pid"; then
    queued=$(SLURM_CONF="$BASE/etc/slurm.conf" timeout 20 squeue -h -o %i 2>/dev/null | paste -sd ' ' || true)
    if [[ -n $queued ]]; then
        die "the running cluster (nodes $old_nodes) has jobs queued or running: $queued; switching to nodes $NODE_LIST would lose them: wait for them or scancel them first"
    fi
fi

if write_if_changed "$BASE/etc/slurm.conf" 644 <<EOF
$CONF_MARKER
# Generated by slurm/local-cluster/start.sh; base directory $BASE. Do not edit: rewritten on start.
ClusterName=$CLUSTER
SlurmctldHost=$HOST($CTLD_ADDR)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Short credential lifetime: a requeued job restarts in ~20 s instead of ~2 min.
AuthInfo=cred_expire=10
StateSaveLocation=$BASE/spool/slurmctld
SlurmdSpoolDir=$BASE/spool/slurmd$SLURMD_SUFFIX
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd$SLURMD_SUFFIX.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd$SLURMD_SUFFIX.log
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
# The main scheduling pass every 2 s, not every 60: a requeued job (time limit, preemption,
# node failure) becomes eligible after cred_expire and is started by this pass, which
# backfill does not do for it.
SchedulerParameters=bf_interval=1,sched_interval=2
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
$(node_lines)
PartitionName=$PARTITION Nodes=$NODE_LIST Default=YES MaxTime=INFINITE State=UP
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
    while read -r pidfile; do
        if pid_alive slurmd "$pidfile"; then
            log "slurm.conf changed: restarting slurmd ($(basename "$pidfile" .pid))"
            stop_pidfile slurmd "$pidfile"
        fi
    done < <(slurmd_pidfiles)
    if pid_alive slurmctld "$BASE/run/slurmctld.pid"; then
        log "slurm.conf changed: restarting slurmctld"
        stop_pidfile slurmctld "$BASE/run/slurmctld.pid"
    fi
fi
# slurmd daemons of the other mode (left by an earlier run with another --nodes) go.
while read -r pidfile; do
    node=$(basename "$pidfile" .pid)
    node=${node#slurmd}
    node=${node#-}
    if (( NNODES == 1 )) && [[ -z $node ]]; then continue; fi
    if (( NNODES > 1 )) && [[ -n $node && -n ${NODE_ADDR[$node]:-} ]]; then continue; fi
    stop_pidfile slurmd "$pidfile"
done < <(slurmd_pidfiles)

# --- node network (--nodes N): bridge, one namespace + veth link per node, /etc/hosts --------
NET_SPEC="# net=$NODE_NET nodes=$NNODES"
if (( NNODES == 1 )); then
    teardown_node_network
else
    if [[ -f $NODE_NET_RECORD ]] && [[ $(head -n1 "$NODE_NET_RECORD") != "$NET_SPEC" ]]; then
        teardown_node_network
    fi
    # The range must be ours alone: no address or route in it on another interface.
    while read -r dev addr; do
        if [[ $dev != "$NODE_BRIDGE" && ${addr%/*} == "$NODE_NET".* ]]; then
            die "address range $NODE_NET.0/24 is in use on $dev ($addr); choose another with AVBERT_SLURM_NET=a.b.c"
        fi
    done < <(ip -4 -o addr show | awk '{print $2, $4}')
    while read -r route; do
        if [[ -n $route && $route != *" dev $NODE_BRIDGE "* && $route != *" dev $NODE_BRIDGE" ]]; then
            die "a route into $NODE_NET.0/24 exists outside $NODE_BRIDGE ($route); choose another range with AVBERT_SLURM_NET=a.b.c"
        fi
    done < <(ip -4 route show root "$NODE_NET.0/24")

    [[ -f $NODE_NET_RECORD ]] || echo "$NET_SPEC" >"$NODE_NET_RECORD"
    record() { grep -qxF "$1" "$NODE_NET_RECORD" || echo "$1" >>"$NODE_NET_RECORD"; }
    if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
        log "creating bridge $NODE_BRIDGE ($CTLD_ADDR/24)"
        err=$(ip link add "$NODE_BRIDGE" type bridge 2>&1) || die "could not create bridge $NODE_BRIDGE: $err"
    fi
    record "link $NODE_BRIDGE"
    if ! ip -4 -o addr show dev "$NODE_BRIDGE" | grep -qF " $CTLD_ADDR/24 "; then
        err=$(ip addr add "$CTLD_ADDR/24" dev "$NODE_BRIDGE" 2>&1) || die "could not give $NODE_BRIDGE address $CTLD_ADDR/24: $err"
    fi
    ip link set "$NODE_BRIDGE" up || die "could not bring up $NODE_BRIDGE"
    for ((i = 1; i <= NNODES; i++)); do
        node=${NODES[i - 1]} veth=$NODE_VETH_PREFIX$i addr=${NODE_ADDR[${NODES[i - 1]}]}
        if [[ ! -e $(netns_path "$node") ]]; then
            log "creating network namespace $node ($addr)"
            err=$(ip netns add "$node" 2>&1) || die "could not create network namespace $node (ip netns add: $err); --nodes needs root with CAP_SYS_ADMIN and network namespaces"
        fi
        record "netns $node"
        if ! ip link show "$veth" >/dev/null 2>&1; then
            err=$(ip link add "$veth" type veth peer name eth0 netns "$node" 2>&1) \
                || die "could not create the veth link $veth <-> $node:eth0: $err"
        fi
        record "link $veth"
        { ip link set "$veth" master "$NODE_BRIDGE" && ip link set "$veth" up \
            && ip -n "$node" link set lo up && ip -n "$node" link set eth0 up; } \
            || die "could not bring up the link $veth <-> $node:eth0"
        if ! ip -n "$node" -4 -o addr show dev eth0 | grep -qF " $addr/24 "; then
            err=$(ip -n "$node" addr add "$addr/24" dev eth0 2>&1) || die "could not give $node:eth0 address $addr/24: $err"
        fi
    done
    # Node names resolve on the host and in every namespace (they share /etc/hosts).
    hosts_want=$(for node in "${NODES[@]}"; do echo "${NODE_ADDR[$node]} $node $HOSTS_MARKER"; done)
    if [[ $(grep -F "$HOSTS_MARKER" /etc/hosts 2>/dev/null) != "$hosts_want" ]]; then
        remove_hosts_lines
        echo "$hosts_want" >>/etc/hosts || die "could not add the node names to /etc/hosts"
        log "added ${NODES[*]} to /etc/hosts"
    fi
fi

ctld_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
if ! pid_alive slurmctld "$BASE/run/slurmctld.pid"; then
    rm -f "$BASE/run/slurmctld.pid"
    log "starting slurmctld"
    slurmctld </dev/null >>"$BASE/log/slurmctld.log" 2>&1 || die_log "slurmctld failed to start" "$BASE/log/slurmctld.log"
fi
wait_for 30 "slurmctld to answer" up_or_dead slurmctld "$BASE/run/slurmctld.pid" ctld_ok && ctld_ok \
    || die_log "slurmctld does not answer" "$BASE/log/slurmctld.log"

# slurmd_pidfile/slurmd_log NODE: where that node's slurmd writes (see SlurmdPidFile).
slurmd_pidfile() { if (( NNODES == 1 )); then echo "$BASE/run/slurmd.pid"; else echo "$BASE/run/slurmd-$1.pid"; fi; }
slurmd_log() { if (( NNODES == 1 )); then echo "$BASE/log/slurmd.log"; else echo "$BASE/log/slurmd-$1.log"; fi; }
for node in "${NODES[@]}"; do
    pidfile=$(slurmd_pidfile "$node") logfile=$(slurmd_log "$node")
    pid_alive slurmd "$pidfile" && continue
    rm -f "$pidfile"
    if (( NNODES == 1 )); then
        log "starting slurmd"
        slurmd </dev/null >>"$logfile" 2>&1 || die_log "slurmd failed to start" "$logfile"
    else
        log "starting slurmd $node in its namespaces (${NODE_ADDR[$node]})"
        # nsenter, not `ip netns exec`: the latter remounts /sys, hiding the cgroup tree slurmd
        # reads. slurmd daemonizes and keeps both namespaces. ($1 is expanded by the inner sh.)
        # shellcheck disable=SC2016
        nsenter --net="$(netns_path "$node")" -- unshare --uts -- \
            sh -c 'hostname "$1" && exec slurmd -N "$1"' sh "$node" </dev/null >>"$logfile" 2>&1 \
            || die_log "slurmd $node failed to start" "$logfile"
    fi
done

# --- wait until usable ----------------------------------------------------------------------
node_state() { sinfo -h -n "$1" -o '%T' 2>/dev/null | head -n1; }
node_usable() {
    local s
    s=$(node_state "$1")
    case $s in
        idle|mixed|allocated|completing) return 0 ;;
        # A node left drained/down by an earlier run (e.g. a killed slurmd) is put back.
        drain*|down*|fail*) scontrol update NodeName="$1" State=RESUME >/dev/null 2>&1 || true; return 1 ;;
        *) return 1 ;;
    esac
}
for node in "${NODES[@]}"; do
    pidfile=$(slurmd_pidfile "$node") logfile=$(slurmd_log "$node")
    wait_for 30 "node $node to be idle" up_or_dead slurmd "$pidfile" node_usable "$node" && node_usable "$node" \
        || die_log "node $node is not usable (state: $(node_state "$node"); reason: $(sinfo -h -n "$node" -o '%E' 2>/dev/null))" "$logfile"
done
sacct_ok() { sacct -n -X -S now-1hour -o JobID >/dev/null 2>&1; }
wait_for 30 "sacct to answer" sacct_ok || die_log "sacct does not answer" "$BASE/log/slurmdbd.log"

T_END=$(date +%s.%N)
elapsed=$(awk -v a="$T_START" -v b="$T_END" 'BEGIN { printf "%.1f", b - a }')
if (( NNODES == 1 )); then
    nodes_text="node $HOST, $CPUS CPUs, RealMemory=${REAL_MEM}M"
else
    nodes_text="nodes $NODE_LIST in network namespaces on $NODE_NET.0/24, each $CPUS CPUs (shared), RealMemory=${REAL_MEM}M"
fi
cat <<EOF
[local-cluster] Slurm cluster '$CLUSTER' is up (${elapsed}s): $nodes_text, partition '$PARTITION' (default).
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
