#!/usr/bin/env bash
# A throwaway one-node SLURM cluster on this machine (Debian's slurm-wlm and munge), so that CI can
# run the workflow through `--profile` with the real SLURM executor.
#
#   .ci/slurm-cluster.sh start   # write /etc/slurm/slurm.conf, start munged, slurmctld and slurmd
#   .ci/slurm-cluster.sh stop    # stop exactly the daemons `start` started, by their pids
#
# Needs root and `apt-get install slurmctld slurmd slurm-client munge`. State, logs and pid files
# live in $EMSEG_SLURM_DIR (default /tmp/emseg-slurm); the one partition is $EMSEG_SLURM_PARTITION
# (default debug). A slurm.conf that this script did not write is never touched.
set -euo pipefail

STATE=${EMSEG_SLURM_DIR:-/tmp/emseg-slurm}
PARTITION=${EMSEG_SLURM_PARTITION:-debug}
# The job-step plugin strips every SLURM_* variable (SLURM_CONF too) before it calls srun, so the
# configuration must be at the compiled-in default path.
CONF=/etc/slurm/slurm.conf
MARK="# written by emseg .ci/slurm-cluster.sh"
PIDS="$STATE/pids" # "name pid" per daemon this script started, in start order

die() {
    echo "slurm-cluster: $*" >&2
    exit 1
}

alive() { # alive NAME PID: the process still exists and is still that daemon (pids get reused)
    [ -r "/proc/$2/comm" ] && [ "$(cat "/proc/$2/comm")" = "$1" ]
}

wait_for_file() { # the daemons fork and write their pid file a moment later
    for _ in $(seq 100); do
        [ -s "$1" ] && return 0
        sleep 0.1
    done
    return 1
}

write_conf() {
    local cpus memory
    cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')
    # A RealMemory above what slurmd detects drains the node: declare 90% of it.
    memory=$(($(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p') * 9 / 10))
    mkdir -p /etc/slurm
    cat >"$CONF" <<EOF
$MARK
ClusterName=emseg-ci
SlurmctldHost=$(hostname -s)(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# squeue as the job status command needs finished jobs to stay visible for a while.
MinJobAge=300
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

start_daemon() { # start_daemon NAME PIDFILE COMMAND...: run it, record its pid
    local name=$1 pidfile=$2
    shift 2
    rm -f "$pidfile"
    "$@"
    wait_for_file "$pidfile" || die "$name did not write $pidfile; see the logs in $STATE"
    echo "$name $(cat "$pidfile")" >>"$PIDS"
}

start() {
    [ "$(id -u)" = 0 ] || die "must run as root"
    command -v slurmctld >/dev/null || die "slurmctld is not installed"
    if [ -s "$PIDS" ]; then
        # A cluster from an earlier start (or one killed before its stop ran): its daemons would
        # hold the ports, so stop what it recorded and start afresh.
        echo "slurm-cluster: stopping the cluster an earlier start left behind"
        stop
    fi
    if [ -e "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; leaving it alone"
    fi
    # Old state would bring old jobs back.
    rm -rf "$STATE"
    mkdir -p "$STATE/state" "$STATE/spool"
    write_conf
    # Whatever fails from here on (die exits too), stop what was started.
    trap 'stop >/dev/null 2>&1 || true' EXIT

    mkdir -p /run/munge
    chown munge:munge /run/munge
    if [ -s /run/munge/munged.pid ] && alive munged "$(cat /run/munge/munged.pid)"; then
        echo "slurm-cluster: using the munged that is already running"
    else
        start_daemon munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged
    fi
    start_daemon slurmctld "$STATE/slurmctld.pid" slurmctld
    start_daemon slurmd "$STATE/slurmd.pid" slurmd -N localhost

    for _ in $(seq 150); do
        if [ "$(sinfo -h -o %T 2>/dev/null)" = idle ]; then
            trap - EXIT
            echo "slurm-cluster: up (partition $PARTITION, state in $STATE)"
            return 0
        fi
        sleep 0.2
    done
    tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
    false
}

stop() {
    local name pid
    if [ -s "$PIDS" ]; then
        # Reverse start order: slurmd, slurmctld, then munged.
        tac "$PIDS" | while read -r name pid; do
            if alive "$name" "$pid"; then
                kill -TERM "$pid"
                for _ in $(seq 100); do
                    alive "$name" "$pid" || break
                    sleep 0.1
                done
                alive "$name" "$pid" && echo "slurm-cluster: $name ($pid) still running" >&2
            fi
            echo "slurm-cluster: stopped $name ($pid)"
        done
        rm -f "$PIDS"
    fi
    if [ -e "$CONF" ] && grep -qxF "$MARK" "$CONF"; then
        rm -f "$CONF"
    fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*) die "usage: $0 start|stop" ;;
esac
