#!/usr/bin/env bash
# A real single-node Slurm on this machine, for nnrun's Slurm backend and its
# tests.  Idempotent: when the cluster already answers with an idle node this
# takes a fraction of a second.  Root only.
#
#   scripts/ensure-slurm.sh          install (Debian's slurmctld slurmd
#                                    slurm-client munge), configure, start munged,
#                                    slurmctld, slurmd, wait until the node is idle
#   scripts/ensure-slurm.sh --stop   stop the three daemons (by their pid files)
#
# The configuration is one verified on this project's CI machines (Debian
# bookworm, Slurm 22.05, cgroup v1): one node, task/cgroup + ConstrainRAMSpace
# so that --mem is really enforced (a job over it ends OUT_OF_MEMORY), no
# slurmdbd (finished jobs are read back with `sacct -c` from the jobcomp file).
# RealMemory and CPUs are what `slurmd -C` detects.
# It is only written when /etc/slurm/slurm.conf is missing or was written by
# this script; a slurm.conf of someone else is left alone.
#
# Environment: NNRUN_SLURM_TIMEOUT (seconds to wait for an idle node, default 60).
set -euo pipefail

log() { echo "ensure-slurm: $*" >&2; }
die() { log "$*"; exit 1; }

CONF=/etc/slurm/slurm.conf
CGROUP_CONF=/etc/slurm/cgroup.conf
MARK="# written by nnrun scripts/ensure-slurm.sh"
LOGDIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
TIMEOUT="${NNRUN_SLURM_TIMEOUT:-60}"

# pid from a pid file, when that process is alive and is the named program.
alive() {
    local pidfile=$1 name=$2 pid
    [ -f "$pidfile" ] || return 1
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$name" || return 1
    echo "$pid"
}

stop_one() {
    local pidfile=$1 name=$2 pid
    if pid="$(alive "$pidfile" "$name")"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do
            [ -d "/proc/$pid" ] || break
            sleep 0.25
        done
        if [ -d "/proc/$pid" ]; then
            log "$name (pid $pid) did not stop within 10 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

if [ "${1:-}" = "--stop" ]; then
    [ "$(id -u)" = 0 ] || die "--stop needs root"
    stop_one "$SLURMD_PID" slurmd
    stop_one "$CTLD_PID" slurmctld
    stop_one "$MUNGE_PID" munged
    exit 0
elif [ -n "${1:-}" ]; then
    die "unknown argument $1 (usage: ensure-slurm.sh [--stop])"
fi

node_state() { timeout 10 sinfo -h -o %T 2>/dev/null | head -1 || true; }

# Fast path: everything already up.
if command -v sinfo >/dev/null 2>&1 && alive "$CTLD_PID" slurmctld >/dev/null && alive "$SLURMD_PID" slurmd >/dev/null; then
    case "$(node_state)" in
        idle|mixed|allocated|completing) exit 0 ;;
    esac
fi

[ "$(id -u)" = 0 ] || die "Slurm is not running and this is not root: run scripts/ensure-slurm.sh as root (it installs and starts a one-node Slurm)"

# 1. Packages.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
    log "installing slurmctld slurmd slurm-client munge from Debian"
    export DEBIAN_FRONTEND=noninteractive
    # Debian's maintainer scripts would try to start the services; we start them ourselves.
    POLICY=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$POLICY" ]; then printf '#!/bin/sh\nexit 101\n' >"$POLICY"; chmod +x "$POLICY"; made_policy=1; fi
    install_pkgs() { apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/tmp/nnrun-slurm-apt.log 2>&1; }
    if ! install_pkgs; then
        apt-get update -q >/dev/null 2>&1 || true
        install_pkgs || { [ "$made_policy" = 1 ] && rm -f "$POLICY"; tail -20 /tmp/nnrun-slurm-apt.log >&2; die "apt-get install failed (log: /tmp/nnrun-slurm-apt.log)"; }
    fi
    [ "$made_policy" = 1 ] && rm -f "$POLICY"
fi

# 2. munge.
mkdir -p /run/munge /var/spool/slurmctld /var/spool/slurmd "$LOGDIR" /etc/slurm
chown munge:munge /run/munge
[ -s /etc/munge/munge.key ] || /usr/sbin/mungekey --create --force >/dev/null 2>&1 || die "mungekey --create failed"
chown munge:munge /etc/munge/munge.key 2>/dev/null || true
chmod 600 /etc/munge/munge.key
if ! alive "$MUNGE_PID" munged >/dev/null; then
    rm -f "$MUNGE_PID" /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged --force || die "munged did not start (see /var/log/munge/munged.log)"
    log "started munged"
fi

# 3. Configuration (only ours, or none yet).
H="$(hostname -s)"
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    log "$CONF was not written by nnrun: using it as it is"
else
    # RealMemory must not exceed what slurmd detects, or the node is drained.
    detected="$(slurmd -C 2>/dev/null | tr ' ' '\n' | sed -n 's/^RealMemory=//p' | head -1)"
    [ -n "$detected" ] || die "slurmd -C did not report RealMemory"
    cpus="$(slurmd -C 2>/dev/null | tr ' ' '\n' | sed -n 's/^CPUs=//p' | head -1)"
    cpus="${cpus:-$(nproc)}"
    new="$(cat <<CONF
$MARK
ClusterName=ci
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
ReturnToService=2
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
NodeName=$H NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$detected State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
)"
    if [ "$(cat "$CONF" 2>/dev/null || true)" != "$new" ]; then
        printf '%s\n' "$new" >"$CONF"
        log "wrote $CONF (node $H, CPUs=$cpus, RealMemory=$detected MB)"
        # Daemons running with another configuration must re-read it.
        stop_one "$SLURMD_PID" slurmd
        stop_one "$CTLD_PID" slurmctld
    fi
    printf '%s\nConstrainRAMSpace=yes\n' "$MARK" >"$CGROUP_CONF"
fi

# 4. Daemons.
if ! alive "$CTLD_PID" slurmctld >/dev/null; then
    rm -f "$CTLD_PID"
    slurmctld || die "slurmctld did not start (see $LOGDIR/slurmctld.log)"
    log "started slurmctld"
fi
if ! alive "$SLURMD_PID" slurmd >/dev/null; then
    rm -f "$SLURMD_PID"
    slurmd || die "slurmd did not start (see $LOGDIR/slurmd.log)"
    log "started slurmd"
fi

# 5. Wait for an idle node.
deadline=$((SECONDS + TIMEOUT))
resumed=0
while :; do
    state="$(node_state)"
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|drained*)
            # A node left down by an earlier, killed slurmd: bring it back once.
            if [ "$resumed" = 0 ]; then
                scontrol update nodename="$H" state=resume >/dev/null 2>&1 || true
                resumed=1
            fi ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        log "the Slurm node did not become idle within $TIMEOUT s (state: ${state:-no answer from slurmctld})"
        scontrol show node "$H" 2>/dev/null | grep -E 'State|Reason' >&2 || true
        tail -5 "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" >&2 2>/dev/null || true
        exit 1
    fi
    sleep 0.25
done
log "Slurm is up: node $H $(node_state) ($(sinfo -V 2>/dev/null))"
