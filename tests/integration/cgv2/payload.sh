#!/bin/bash
# Runs as root inside the cgroup v2 guest at boot (unit nnrun-payload.service, from the 9p share), then the
# guest powers off.  Every scenario leaves results/<name>.json (nnrun's --json report, or doctor's) and
# results/<name>.meta.json (exit code, seconds, what the guest saw); tests/integration/test_cgroup_v2_real.py
# checks them.  The share holds: src/ (nnrun's runner package from the checkout), slim.tar (the test
# image, `docker save` on the host), raw/ (the datasets with fake-nnunet.json), fake_nnunetv2/, scenarios.
set -u
S=/share
R=$S/results
mkdir -p "$R"
exec >"$S/payload.log" 2>&1
T0=$(date +%s.%N)
IMAGE=nnrun-cgv2:test
export PYTHONPATH=$S/src NNRUN_CACHE=/var/cache/nnrun-guest
PY=/opt/nnrun-venv/bin/python
elapsed() { python3 -c "import sys,time; print(round(time.time()-float(sys.argv[1]),1))" "$1"; }
say() { echo "[payload $(elapsed "$T0") s] $*"; }

meta() {   # meta NAME KEY=VALUE... (values are JSON literals or plain strings)
    local name=$1; shift
    python3 - "$R/$name.meta.json" "$@" <<'EOF'
import json, sys
out, pairs = sys.argv[1], sys.argv[2:]
data = {}
for p in pairs:
    k, _, v = p.partition("=")
    try:
        data[k] = json.loads(v)
    except ValueError:
        data[k] = v
json.dump(data, open(out, "w"), indent=1)
EOF
}

say "guest up: $(uname -r), /sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup)"
meta guest cgroup_fs="$(stat -fc %T /sys/fs/cgroup)" controllers="$(cat /sys/fs/cgroup/cgroup.controllers)" \
    kernel="$(uname -r)" boot_to_payload_s="$(cut -d' ' -f1 /proc/uptime)"

# The datasets on the guest's disk (9p is slow, and the raw folder is mounted read-only into containers).
rm -rf /srv/raw /srv/pre && mkdir -p /srv/pre && cp -a "$S/raw" /srv/raw

wait_docker() {
    local i
    for i in $(seq 1 180); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
    return 1
}

t=$(date +%s.%N)
wait_docker || { say "dockerd did not answer"; meta docker_setup ok=false; systemctl --no-block poweroff; exit 1; }
say "dockerd answers after $(elapsed "$t") s"
t=$(date +%s.%N)
docker load -i "$S/slim.tar" >/dev/null
meta docker_setup ok=true load_s="$(elapsed "$t")" driver="$(docker info -f '{{.CgroupDriver}}')" \
    cgroup_version="$(docker info -f '{{.CgroupVersion}}')" docker_version="$(docker version -f '{{.Server.Version}}')"
say "image loaded in $(elapsed "$t") s; driver $(docker info -f '{{.CgroupDriver}}')"

# preprocess NAME DATASET MEM [VAR=VALUE...] [-- extra nnrun args]: nnrun's CLI, --json, meta with exit code and time.
preprocess() {
    local name=$1 ds=$2 mem=$3; shift 3
    local envs=() extra=()
    while [ $# -gt 0 ]; do
        if [ "$1" = -- ]; then shift; extra=("$@"); break; fi
        envs+=("$1"); shift
    done
    local t; t=$(date +%s.%N)
    say "$name: nnrun preprocess -d $ds --mem $mem ${extra[*]:-}"
    env NNRUN_TEST_ID="cgv2-$name" "${envs[@]}" $PY -m runner.cli preprocess -d "$ds" --mem "$mem" -npfp 2 --no_pp \
        --retry 0 --no-plot --json --image "$IMAGE" --raw /srv/raw --preprocessed /srv/pre "${extra[@]}" \
        >"$R/$name.json" 2>"$R/$name.stderr"
    local rc=$?
    meta "$name" exit_code=$rc seconds="$(elapsed "$t")" driver="$(docker info -f '{{.CgroupDriver}}' 2>/dev/null)"
    keep_run_folder "$name"
    say "$name: exit $rc after $(elapsed "$t") s: $(head -c 300 "$R/$name.json")"
}

keep_run_folder() {   # NAME: the run folder's small files next to the results (for a failing test's message)
    local dir
    dir=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('run_dir') or '')" "$R/$1.json" 2>/dev/null)
    [ -n "$dir" ] && [ -d "$dir" ] || return 0
    mkdir -p "$R/$1.run"
    for f in nnunet.log status.json events.jsonl agent.jsonl; do
        [ -f "$dir/$f" ] && tail -c 20000 "$dir/$f" >"$R/$1.run/$f"
    done
}
export -f keep_run_folder

docker_scenarios() {   # SUFFIX: the Docker scenarios under the daemon's current cgroup driver
    local sfx=$1
    # ok once, under the systemd driver (the OOM paths are what differ by driver; 47 s of emulated CPU saved)
    [ -z "$sfx" ] && preprocess "ok$sfx" 601 1g
    preprocess "worker_oom$sfx" 602 300m NNRUN_TEST_OOM_VICTIM=worker
    preprocess "main_oom$sfx" 603 300m NNRUN_TEST_OOM_VICTIM=main
}

# Rootless Podman as user runner (uid 1000), alongside the Docker scenarios (it does not use dockerd).
podman_pid=""
if [ -f "$S/scenarios/podman" ] && [ -f "$S/podman-rootless.sh" ]; then
    ( t=$(date +%s.%N); bash "$S/podman-rootless.sh"; say "podman: $(elapsed "$t") s" ) &
    podman_pid=$!
fi

# doctor: the cgroup version and the real OOM probe.
t=$(date +%s.%N)
NNRUN_TEST_ID=cgv2-doctor $PY -m runner.cli doctor --json --image "$IMAGE" --raw /srv/raw --preprocessed /srv/pre \
    >"$R/doctor.json" 2>"$R/doctor.stderr"
meta doctor exit_code=$? seconds="$(elapsed "$t")"
say "doctor: $(elapsed "$t") s"

docker_scenarios ""

# A worker that dies of SIGKILL with the OOM counter flat: not oom.
preprocess worker_killed 605 1g

# docker kill: the container killed from outside while a case sleeps.
t=$(date +%s.%N)
( NNRUN_TEST_ID=cgv2-docker_kill $PY -m runner.cli preprocess -d 604 --mem 1g -npfp 2 --no_pp --retry 0 --no-plot \
    --json --image "$IMAGE" --raw /srv/raw --preprocessed /srv/pre >"$R/docker_kill.json" 2>"$R/docker_kill.stderr";
  echo $? >"$R/docker_kill.rc" ) &
bg=$!
cid=""
for _ in $(seq 1 240); do
    cid=$(docker ps -q --filter label=io.nnrun.test-id=cgv2-docker_kill | head -1)
    if [ -n "$cid" ] && grep -qs case_start /srv/pre/Dataset604_*/.nnrun/runs/*/agent.jsonl; then break; fi
    sleep 0.5
done
[ -n "$cid" ] && sleep 2 && docker kill "$cid" >/dev/null
wait $bg
meta docker_kill exit_code="$(cat "$R/docker_kill.rc" 2>/dev/null || echo null)" seconds="$(elapsed "$t")" \
    killed_container="${cid:-none}"
say "docker_kill: exit $(cat "$R/docker_kill.rc" 2>/dev/null) after $(elapsed "$t") s"

# The container's cgroup directory after its PID 1 exited (the reason for the supervisor / parent design).
cid=$(docker run -d --memory 64m --memory-swap 64m --entrypoint python3 "$IMAGE" -c 'import time; time.sleep(2)')
dir=$(find /sys/fs/cgroup -maxdepth 3 -type d -name "*$cid*" | head -1)
docker wait "$cid" >/dev/null
sleep 1
meta cgroup_dir_after_exit driver="$(docker info -f '{{.CgroupDriver}}')" dir_while_running="$dir" \
    exists_after_exit="$([ -n "$dir" ] && [ -d "$dir" ] && echo true || echo false)"
docker rm -f "$cid" >/dev/null

# --runtime host inside a transient systemd scope with MemoryMax (what Slurm's cgroup/v2 plugin does).
if [ -f "$S/scenarios/host" ]; then
    t=$(date +%s.%N)
    say "host_scope_oom: systemd-run --scope -p MemoryMax=300M nnrun preprocess --runtime host"
    NNRUN_TEST_OOM_VICTIM=worker NNRUN_TEST_ID=cgv2-host systemd-run --quiet --scope -p MemoryMax=300M \
        -p MemorySwapMax=0 --setenv=PYTHONPATH="$PYTHONPATH" \
        env PYTHONPATH="$PYTHONPATH" NNRUN_TEST_OOM_VICTIM=worker \
        $PY -m runner.cli preprocess -d 606 --mem 300m -npfp 2 --no_pp --retry 0 --no-plot --json --runtime host \
        --host-python "$S/fake-python" --raw /srv/raw --preprocessed /srv/pre \
        >"$R/host_scope_oom.json" 2>"$R/host_scope_oom.stderr"
    meta host_scope_oom exit_code=$? seconds="$(elapsed "$t")"
    say "host_scope_oom: $(head -c 300 "$R/host_scope_oom.json")"
fi

# Docker with the cgroupfs driver.
if [ -f "$S/scenarios/cgroupfs" ]; then
    t=$(date +%s.%N)
    mkdir -p /etc/docker
    echo '{"exec-opts": ["native.cgroupdriver=cgroupfs"]}' >/etc/docker/daemon.json
    systemctl restart docker
    wait_docker
    meta cgroupfs_setup driver="$(docker info -f '{{.CgroupDriver}}')" seconds="$(elapsed "$t")"
    say "dockerd restarted with driver $(docker info -f '{{.CgroupDriver}}') in $(elapsed "$t") s"
    docker_scenarios _cgroupfs
fi

[ -n "$podman_pid" ] && wait "$podman_pid"

meta done seconds="$(elapsed "$T0")"
say "payload done"
sync
