#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the Slurm backend's tests (and for trying it out).
#
#   scripts/slurm.sh start DIR    installs Debian's slurmctld, slurmd, slurm-client and munge if missing (as root
#                                 or with sudo), then starts munged, slurmctld and slurmd with their files in DIR
#                                 (munge's in a folder of its own in /tmp: it needs every folder above traversable)
#                                 and waits for an idle node; prints the SLURM_CONF to export
#   scripts/slurm.sh stop DIR     cancels every job, stops the daemons and removes DIR
#   scripts/slurm.sh install      only the installation (exits non-zero, saying why, where it cannot)
#   scripts/slurm.sh ctld-stop DIR / ctld-start DIR
#                                 stops or starts the controller alone (a controller that is down, for the tests)
#
# No systemd or cgroups are needed. The node is described from this machine (CPUs, memory): a node described
# larger than the hardware never becomes idle.
set -euo pipefail

as_root() {
    if [[ $(id -u) == 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "slurm.sh: installing Slurm needs root (or sudo): apt-get install slurmctld slurmd slurm-client munge" >&2
        return 1
    fi
}

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v salloc >/dev/null && return 0
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
}

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_ctld() {
    local dir=$1
    SLURM_CONF=$dir/slurm.conf slurmctld -D >> "$dir/log/slurmctld.out" 2>&1 &
    echo $! > "$dir/slurmctld.daemon"
}

wait_idle() {
    local dir=$1
    for _ in $(seq 1 300); do
        if [[ $(SLURM_CONF=$dir/slurm.conf sinfo -h -o %T 2>/dev/null) == idle ]]; then
            return 0
        fi
        sleep 0.1
    done
    echo "slurm.sh: the node did not become idle; logs in $dir/log" >&2
    tail -5 "$dir"/log/*.log >&2 || true
    return 1
}

start() {
    local dir=$1
    install
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    # munged refuses a socket whose folders others cannot traverse, all the way up: its files go to a folder of
    # their own in /tmp, so that DIR may lie in a private folder (a clone in a `mktemp -d` one, say).
    local munge
    munge=$(mktemp -d /tmp/autoresearch-munge.XXXXXX)
    chmod 755 "$munge"
    echo "$munge" > "$dir/munge.dir"
    local host cpus memory
    host=$(hostname -s)
    cpus=$(nproc)
    memory=$(awk '/MemTotal/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)
    cat > "$dir/slurm.conf" <<EOF
ClusterName=autoresearch
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthInfo=socket=$munge/munge.socket.2
SlurmUser=$(id -un)
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
ReturnToService=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    mungekey --create --keyfile="$munge/munge.key" >/dev/null 2>&1 || mungekey -c -k "$munge/munge.key"
    munged --socket="$munge/munge.socket.2" --key-file="$munge/munge.key" \
        --pid-file="$munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$munge/munged.seed"
    start_ctld "$dir"
    SLURM_CONF=$dir/slurm.conf slurmd -D >> "$dir/log/slurmd.out" 2>&1 &
    echo $! > "$dir/slurmd.daemon"
    wait_idle "$dir"
    echo "export SLURM_CONF=$dir/slurm.conf"
}

# Sends TERM to the process in pid file $1, waits up to 5 s, then KILLs it.
stop_pid() {
    local file=$1 pid
    [[ -f $file ]] || return 0
    pid=$(cat "$file")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    local dir=$1
    [[ -d $dir ]] || return 0
    export SLURM_CONF=$dir/slurm.conf
    # Running jobs and their slurmstepd outlive slurmd: cancel them first.
    scancel --user "$(id -un)" 2>/dev/null || true
    for _ in $(seq 1 50); do
        [[ -z $(squeue -h 2>/dev/null) ]] && break
        sleep 0.1
    done
    stop_pid "$dir/slurmd.daemon"
    stop_pid "$dir/slurmctld.daemon"
    local munge
    munge=$(cat "$dir/munge.dir" 2>/dev/null || true)
    if [[ -n $munge ]]; then
        stop_pid "$munge/munged.pid"
        rm -rf "$munge"
    fi
    rm -rf "$dir"
}

case ${1:-} in
    install) install ;;
    start) start "${2:?DIR}" ;;
    stop) stop "${2:?DIR}" ;;
    ctld-stop) stop_pid "${2:?DIR}/slurmctld.daemon" ;;
    ctld-start) start_ctld "${2:?DIR}" && wait_idle "$2" ;;
    *) echo "usage: scripts/slurm.sh install | start|stop|ctld-stop|ctld-start DIR" >&2; exit 2 ;;
esac
