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
