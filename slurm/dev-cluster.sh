#!/usr/bin/env bash
# One-node SLURM cluster on this machine, for development and CI.
#
#   bash slurm/dev-cluster.sh start    install (apt) if needed, configure, start, wait until idle
#   bash slurm/dev-cluster.sh status   show daemons and sinfo; exit 0 when usable
#   bash slurm/dev-cluster.sh stop     stop slurmd, slurmctld, munged
#
# Needs root. Runs the daemons directly (no systemd). Idempotent: `start` on a
# running, usable cluster with an unchanged config returns at once.
#
# Environment knobs (all optional):
#   SLURM_DEV_CPUS      CPUs advertised by the node (default 8, above the real count
#                       so several single-core worker jobs fit)
#   SLURM_DEV_TIMEOUT   seconds to wait for the node to become idle (default 60)
set -euo pipefail

CPUS="${SLURM_DEV_CPUS:-8}"
TIMEOUT="${SLURM_DEV_TIMEOUT:-60}"
NODE="$(hostname -s)"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
CGROUP_CONF="$CONF_DIR/cgroup.conf"
LOG_DIR=/var/log/slurm
CTLD_LOG="$LOG_DIR/slurmctld.log"
SLURMD_LOG="$LOG_DIR/slurmd.log"
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { echo "dev-cluster: $*"; }

now_ms() { echo $(($(date +%s%N) / 1000000)); }
since() { local d=$(($(now_ms) - $1)); printf '%d.%01d s' $((d / 1000)) $((d % 1000 / 100)); }

# Logs whose tail `die` prints; start_munge narrows it to munge's own log.
DIE_LOGS=("$CTLD_LOG" "$SLURMD_LOG")

die() {
    echo "dev-cluster: ERROR: $*" >&2
    local f
    for f in "${DIE_LOGS[@]}"; do
        if [[ -s "$f" ]]; then
            echo "---- last lines of $f ----" >&2
            tail -n 15 "$f" >&2
        fi
    done
    echo "dev-cluster: ERROR: $*" >&2
    exit 1
}

# Live (non-zombie) pids of a process name; exited daemon parents can linger as
# zombies for a moment before init reaps them.
live_pids() { ps -C "$1" -o pid=,stat= 2>/dev/null | awk '$2 !~ /^Z/ {print $1}'; }
running() { [[ -n "$(live_pids "$1")" ]]; }

need_root() {
    [[ "$(id -u)" == 0 ]] || { echo "dev-cluster: ERROR: must run as root" >&2; exit 1; }
}

# ---------------------------------------------------------------- install
have_binaries() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v sinfo >/dev/null && command -v sbatch >/dev/null &&
        command -v munged >/dev/null && command -v munge >/dev/null
}

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${PACKAGES[@]}"
}

install_packages() {
    have_binaries && return 0
    log "installing ${PACKAGES[*]} with apt-get (one-time)"
    local t0 made_policy=0
    t0=$(now_ms)
    # No init system here: keep package scripts from trying to start services.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local ok=0
    # Only refresh the package lists when the install cannot proceed without it.
    if apt-cache show "${PACKAGES[@]}" >/dev/null 2>&1 && apt_install >/tmp/dev-cluster-apt.log 2>&1; then
        ok=1
    else
        log "apt-get install failed with the current package lists; running apt-get update"
        if DEBIAN_FRONTEND=noninteractive apt-get update -q >>/tmp/dev-cluster-apt.log 2>&1 &&
            apt_install >>/tmp/dev-cluster-apt.log 2>&1; then
            ok=1
        fi
    fi
    [[ $made_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
    if [[ $ok != 1 ]] || ! have_binaries; then
        tail -n 20 /tmp/dev-cluster-apt.log >&2 || true
        die "apt-get install ${PACKAGES[*]} failed (full log: /tmp/dev-cluster-apt.log)"
    fi
    log "installed in $(since "$t0")"
}

# ---------------------------------------------------------------- munge
munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    local DIE_LOGS=(/var/log/munge/munged.log)
    getent passwd munge >/dev/null || die "user 'munge' missing (munge package not installed?)"
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge /etc/munge
    chown -R munge:munge /var/log/munge /var/lib/munge /etc/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    if running munged && munge_works; then
        return 0
    fi
    pkill -x munged 2>/dev/null || true
    sleep 0.2
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged || die "munged did not start"
    for _ in $(seq 1 50); do
        munge_works && return 0
        sleep 0.1
    done
    die "munged started but 'munge -n | unmunge' fails"
}

# ---------------------------------------------------------------- config
real_memory_mb() {
    # A bit below the real memory, so slurmd never reports less than configured.
    local total
    total=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    local reserve=$((total / 20))
    ((reserve < 512)) && reserve=512
    echo $((total - reserve))
}

render_conf() {
    local mem
    mem=$(real_memory_mb)
    cat <<EOF
# Written by ngff-engine slurm/dev-cluster.sh: one-node development cluster.
# Edits are overwritten by the next 'dev-cluster.sh start'.
ClusterName=devcluster
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# Debian ships no mailer: the default MailProg makes slurmctld log an error.
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job that gives no --mem would take the whole node.
DefMemPerCPU=1024
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=${STATE_DIR}
SlurmdSpoolDir=${SPOOL_DIR}
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${CTLD_LOG}
SlurmdLogFile=${SLURMD_LOG}
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=30
Waittime=0
NodeName=${NODE} NodeAddr=127.0.0.1 NodeHostname=${NODE} CPUs=${CPUS} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
PartitionName=batch Nodes=${NODE} Default=NO MaxTime=INFINITE State=UP
EOF
}

render_cgroup_conf() {
    cat <<EOF
# Written by ngff-engine slurm/dev-cluster.sh. No cgroup plugin is used
# (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none).
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
EOF
}

# Writes the config files; returns 0 if slurm.conf changed.
write_conf() {
    install -d -m 0755 "$CONF_DIR" "$LOG_DIR" "$STATE_DIR" "$SPOOL_DIR"
    local new changed=1
    new=$(render_conf)
    if [[ -f "$CONF" ]] && [[ "$(cat "$CONF")" == "$new" ]]; then
        changed=0
    else
        printf '%s\n' "$new" >"$CONF"
        chmod 0644 "$CONF"
        log "wrote $CONF (node $NODE, CPUs=$CPUS, RealMemory=$(real_memory_mb) MB)"
    fi
    local cg
    cg=$(render_cgroup_conf)
    if [[ ! -f "$CGROUP_CONF" ]] || [[ "$(cat "$CGROUP_CONF")" != "$cg" ]]; then
        printf '%s\n' "$cg" >"$CGROUP_CONF"
    fi
    return $((1 - changed))
}

# ---------------------------------------------------------------- state
node_state() { sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | head -n 1; }

node_usable() {
    local s
    s=$(node_state)
    [[ "$s" == idle || "$s" == mix || "$s" == alloc || "$s" == comp ]]
}

cluster_usable() {
    running munged && running slurmctld && running slurmd && munge_works && node_usable
}

wait_until_idle() {
    local deadline=$((SECONDS + TIMEOUT)) s last_resume=-100
    while ((SECONDS < deadline)); do
        s=$(node_state)
        case "$s" in
            idle | mix | alloc | comp) return 0 ;;
            down* | drain* | drng* | fail*)
                if ((SECONDS - last_resume >= 3)); then
                    scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
                    last_resume=$SECONDS
                fi
                ;;
        esac
        running slurmctld || die "slurmctld exited"
        running slurmd || die "slurmd exited"
        sleep 0.5
    done
    sinfo >&2 || true
    scontrol show node "$NODE" >&2 || true
    die "node $NODE not idle after ${TIMEOUT} s (state: '${s:-unknown}')"
}

stop_daemons() {
    local name
    for name in slurmd slurmctld munged; do
        pkill -x "$name" 2>/dev/null || true
    done
    for _ in $(seq 1 100); do
        running slurmd || running slurmctld || running munged || return 0
        sleep 0.1
    done
    for name in slurmd slurmctld munged; do
        pkill -9 -x "$name" 2>/dev/null || true
    done
    sleep 0.3
}

usage_text() {
    cat <<EOF
SLURM dev cluster is up: node ${NODE}, partitions debug (default) and batch.
  sinfo                              # node should be idle
  srun -N1 -n1 hostname              # run one task
  sbatch --wait --wrap 'echo hi'     # batch job (output in ./slurm-<id>.out)
  squeue                             # queued / running jobs
Python: dask_jobqueue.SLURMCluster(queue="debug", cores=1, memory="1GiB", ...) then
        cluster.scale(jobs=2); jobs run as root on this machine, so paths are shared.
Stop with: bash slurm/dev-cluster.sh stop
EOF
}

# ---------------------------------------------------------------- commands
cmd_start() {
    need_root
    # Fast path: everything running, config unchanged.
    if have_binaries && [[ -f "$CONF" ]] && [[ "$(cat "$CONF")" == "$(render_conf)" ]] && cluster_usable; then
        log "already running; node $NODE is $(node_state)"
        return 0
    fi
    install_packages
    local t0
    t0=$(now_ms)
    start_munge
    local restart=0
    if write_conf; then restart=1; fi
    if [[ $restart == 1 ]] && { running slurmctld || running slurmd; }; then
        log "config changed: restarting slurm daemons"
        pkill -x slurmd 2>/dev/null || true
        pkill -x slurmctld 2>/dev/null || true
        for _ in $(seq 1 100); do
            running slurmd || running slurmctld || break
            sleep 0.1
        done
    fi
    if ! running slurmctld; then
        rm -f /run/slurmctld.pid
        slurmctld || die "slurmctld failed to start"
    fi
    if ! running slurmd; then
        rm -f /run/slurmd.pid
        slurmd || die "slurmd failed to start"
    fi
    sleep 0.5
    running slurmctld || die "slurmctld exited right after start"
    running slurmd || die "slurmd exited right after start"
    wait_until_idle
    # Idle is not enough: check that a job step really launches (munge, ports, spool).
    local out
    if ! out=$(timeout 30 srun -N1 -n1 -t 1 --mem=16M hostname -s 2>&1) || [[ "$out" != "$NODE" ]]; then
        echo "$out" >&2
        die "node $NODE is idle but the test job 'srun hostname' failed"
    fi
    log "node $NODE is $(node_state) and runs jobs, after $(since "$t0")"
    usage_text
}

cmd_stop() {
    need_root
    stop_daemons
    log "stopped"
    return 0
}

cmd_status() {
    local name rc=0
    for name in munged slurmctld slurmd; do
        if running "$name"; then
            echo "$name: running (pid $(live_pids "$name" | paste -sd ' '))"
        else
            echo "$name: not running"
            rc=1
        fi
    done
    if command -v sinfo >/dev/null && running slurmctld; then
        sinfo 2>&1 || rc=1
        node_usable || { echo "node $NODE: not usable (state '$(node_state)')"; rc=1; }
    else
        rc=1
    fi
    if [[ $rc == 0 ]]; then echo "cluster: usable"; else echo "cluster: NOT usable"; fi
    return $rc
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
