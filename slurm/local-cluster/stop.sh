#!/usr/bin/env bash
# Stop the local Slurm cluster started by start.sh (same AVBERT_SLURM_BASE).
#
#   slurm/local-cluster/stop.sh            # stop the daemons; keep state, DB and configs
#   slurm/local-cluster/stop.sh --purge    # also delete the base directory and the
#                                          # /etc/slurm files start.sh wrote
#
# Only processes named in the base directory's pid files are stopped (never by name), in
# reverse start order: slurmd (every node's, with --nodes N), slurmctld, slurmdbd, mariadbd,
# munged. Then the node network of --nodes N goes: the network namespaces, veth links and bridge
# that start.sh recorded, and its marked /etc/hosts lines. A munged that
# start.sh found already running (and so did not start) has no pid file there and is left
# alone. Idempotent: with nothing running it does nothing and succeeds.
# Jobs still queued or running are cancelled first (recorded as CANCELLED in the DB).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$SCRIPT_DIR/common.sh"

purge=0
case "${1:-}" in
    "") ;;
    --purge) purge=1 ;;
    *) die "usage: $0 [--purge]" ;;
esac
[[ $(id -u) -eq 0 ]] || die "must run as root"

# Cancel jobs first: slurmstepd (and the job's processes) would otherwise outlive slurmd.
if pid_alive slurmctld "$BASE/run/slurmctld.pid" && [[ -r $BASE/etc/slurm.conf ]]; then
    export SLURM_CONF="$BASE/etc/slurm.conf"
    jobs_left() { [[ -n $(squeue -h -o %i 2>/dev/null) ]]; }
    if jobs_left; then
        log "cancelling jobs still queued or running: $(squeue -h -o %i | tr '\n' ' ')"
        squeue -h -o %i | xargs -r scancel 2>/dev/null || true
        # KillWait is 30 s by default; then slurmd SIGKILLs what is left.
        no_jobs() { ! jobs_left; }
        wait_for 45 "jobs to finish cancelling" no_jobs || warn "jobs still listed in squeue"
    fi
fi

for d in "${DAEMONS_STOP_ORDER[@]}"; do
    if [[ $d == slurmd ]]; then stop_all_slurmd; else stop_pidfile "$d" "$BASE/run/$d.pid"; fi
done

# Nothing we started may survive: re-check every pid file's process (stop_pidfile removed
# the files, so look at what is left, e.g. a pid file rewritten by a racing start).
left=()
for d in "${DAEMONS_STOP_ORDER[@]}"; do
    if pid_alive "$d" "$BASE/run/$d.pid"; then left+=("$d"); fi
done
while read -r f; do
    if pid_alive slurmd "$f"; then left+=("slurmd ($(basename "$f"))"); fi
done < <(slurmd_pidfiles)
[[ ${#left[@]} -eq 0 ]] || die "still running: ${left[*]}"

# The node network of start.sh --nodes N: namespaces, veth links, bridge, /etc/hosts lines.
teardown_node_network

if [[ $purge -eq 1 ]]; then
    if [[ -f $BASE/etc/wrote-etc-slurm ]]; then
        while read -r f; do
            # Only files that still carry our marker (someone may have replaced them since).
            if [[ -f $f ]] && grep -qxF "$CONF_MARKER" "$f"; then
                log "removing $f"
                rm -f "$f"
            fi
        done <"$BASE/etc/wrote-etc-slurm"
    fi
    log "removing $BASE"
    rm -rf "$BASE"
fi
log "local Slurm cluster stopped (base: $BASE)"
