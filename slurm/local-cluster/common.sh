# Shared helpers for start.sh and stop.sh (sourced, not executed).
# shellcheck shell=bash

_LC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BASE="${AVBERT_SLURM_BASE:-$_LC_DIR/state}"
# Absolute, so the paths written into the configs stay valid from any working directory.
BASE="$(realpath -m "$BASE")"

# First line of every config file we write; how we recognise our own /etc/slurm files.
CONF_MARKER="# avbert-suite slurm/local-cluster: generated file"

# Daemons in stop order (the reverse of start order).
DAEMONS_STOP_ORDER=(slurmd slurmctld slurmdbd mariadbd munged)

# Multi-node mode (start.sh --nodes N, N >= 2): node i is a slurmd named $NODE_PREFIX$i in the
# network namespace of the same name, with its own hostname (UTS namespace), on a veth link to
# the host bridge $NODE_BRIDGE. The bridge holds $NODE_NET.1 (slurmctld's address); node i has
# $NODE_NET.$((i + 1)). The node names resolve through marked lines in /etc/hosts.
NODE_PREFIX=avbert-node
NODE_BRIDGE=avbert-br0
NODE_VETH_PREFIX=avbert-veth
NODE_NET="${AVBERT_SLURM_NET:-10.213.0}"
# What start.sh created for the node network, one object a line ("netns NAME", "link NAME"),
# preceded by a "# net=... nodes=..." line; stop.sh and a 1-node start.sh remove exactly these.
NODE_NET_RECORD="$BASE/run/node-network"
HOSTS_MARKER="# avbert-suite slurm/local-cluster node (base $BASE)"

log()  { echo "[local-cluster] $*"; }
warn() { echo "[local-cluster] WARNING: $*" >&2; }
die()  { echo "[local-cluster] ERROR: $*" >&2; exit 1; }

# die_log MESSAGE LOGFILE: fail, showing the end of the daemon's log.
die_log() {
    local msg=$1 logfile=$2
    echo "[local-cluster] ERROR: $msg" >&2
    if [[ -r $logfile ]]; then
        echo "[local-cluster] ---- last 30 lines of $logfile ----" >&2
        tail -n 30 "$logfile" >&2
        echo "[local-cluster] ----" >&2
    else
        echo "[local-cluster] (no log at $logfile)" >&2
    fi
    exit 1
}

# pid_alive NAME PIDFILE: the pid in PIDFILE is running and is really NAME (guards against a
# stale pid file whose pid was reused by an unrelated process).
pid_alive() {
    local name=$1 pidfile=$2 pid comm
    [[ -r $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name" ]]
}

# stop_pidfile NAME PIDFILE: SIGTERM the process named in PIDFILE, wait up to 30 s, then
# SIGKILL. Never matches processes by name. No-op if it is not running.
stop_pidfile() {
    local name=$1 pidfile=$2 pid i
    if ! pid_alive "$name" "$pidfile"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(tr -dc '0-9' <"$pidfile")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local zombie=0
    for ((i = 0; i < 300; i++)); do
        [[ -e /proc/$pid ]] || break
        # An exited daemon stays a zombie until init reaps it; give init 2 s, then count the
        # zombie as gone (it holds no resources).
        if [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]]; then
            (( ++zombie < 20 )) || break
        fi
        sleep 0.1
    done
    if [[ -e /proc/$pid ]] && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then
        warn "$name (pid $pid) ignored SIGTERM for 30 s: sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
}

# wait_for TIMEOUT_S DESCRIPTION CMD [ARGS...]: poll CMD every 0.2 s until it succeeds.
wait_for() {
    local timeout=$1 desc=$2 deadline
    shift 2
    deadline=$(( $(date +%s) + timeout ))
    until "$@"; do
        if (( $(date +%s) >= deadline )); then
            echo "[local-cluster] timed out after ${timeout}s waiting for $desc" >&2
            return 1
        fi
        sleep 0.2
    done
}

# up_or_dead NAME PIDFILE CMD [ARGS...]: succeed when CMD succeeds, or as soon as the daemon
# named in PIDFILE has died (so wait_for stops early and the caller can show its log).
up_or_dead() {
    local name=$1 pidfile=$2
    shift 2
    # Death first: a client command against a dead daemon's port can block for seconds.
    if [[ -s $pidfile ]] && ! pid_alive "$name" "$pidfile"; then return 0; fi
    "$@"
}

# slurmd_pidfiles: the pid file of the single-node slurmd and those of the namespaced ones.
slurmd_pidfiles() {
    local f
    for f in "$BASE/run/slurmd.pid" "$BASE"/run/slurmd-*.pid; do
        [[ -e $f ]] && echo "$f"
    done
    return 0
}

# stop_all_slurmd: stop every slurmd started from this base (single-node and namespaced).
stop_all_slurmd() {
    local f
    while read -r f; do
        stop_pidfile slurmd "$f"
    done < <(slurmd_pidfiles)
}

# netns_path NAME: the file that names network namespace NAME (as `ip netns add` made it).
netns_path() {
    if [[ -e /run/netns/$1 ]]; then echo "/run/netns/$1"; else echo "/var/run/netns/$1"; fi
}

# remove_hosts_lines: drop the /etc/hosts lines carrying HOSTS_MARKER. The file is rewritten in
# place, not replaced: in a container /etc/hosts is often a bind mount that cannot be renamed over.
remove_hosts_lines() {
    [[ -f /etc/hosts ]] && grep -qF "$HOSTS_MARKER" /etc/hosts || return 0
    local tmp
    tmp=$(mktemp)
    grep -vF "$HOSTS_MARKER" /etc/hosts >"$tmp" || true
    cat "$tmp" >/etc/hosts || { rm -f "$tmp"; die "could not rewrite /etc/hosts"; }
    rm -f "$tmp"
    log "removed the node lines from /etc/hosts"
}

# teardown_node_network: delete the namespaces and links listed in NODE_NET_RECORD (newest first)
# and the marked /etc/hosts lines. Stop the namespaced slurmd first. No-op without a record.
teardown_node_network() {
    if [[ -f $NODE_NET_RECORD ]]; then
        local kind name
        while read -r kind name; do
            case $kind in
                link)
                    if ip link show "$name" >/dev/null 2>&1; then
                        ip link del "$name" || die "could not delete network link $name"
                    fi ;;
                netns)
                    if [[ -e $(netns_path "$name") ]]; then
                        ip netns del "$name" || die "could not delete network namespace $name"
                    fi ;;
            esac
        done < <(grep -v '^#' "$NODE_NET_RECORD" | tac)
        rm -f "$NODE_NET_RECORD"
        log "removed the node network (namespaces, links, bridge $NODE_BRIDGE)"
    fi
    remove_hosts_lines
}
