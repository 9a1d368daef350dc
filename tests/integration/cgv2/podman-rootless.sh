#!/bin/bash
# Part of the cgroup v2 guest's payload (run as root by payload.sh): rootless Podman as the non-root user
# runner (uid 1000, subuids from /etc/subuid), its API served from the user's systemd instance (lingering,
# cgroups delegated by user@.service as Debian sets it), nnrun --runtime podman through that API.
set -u
S=/share
R=$S/results
U=runner
UID_=1000
XDG=/run/user/$UID_
SOCK=$XDG/podman/podman.sock
PY=/opt/nnrun-venv/bin/python
IMAGE=nnrun-cgv2:test
as_user() { runuser -u "$U" -- env HOME=/home/$U XDG_RUNTIME_DIR=$XDG DBUS_SESSION_BUS_ADDRESS=unix:path=$XDG/bus \
    PYTHONPATH=$S/src "$@"; }
elapsed() { python3 -c "import sys,time; print(round(time.time()-float(sys.argv[1]),1))" "$1"; }
meta() {
    local name=$1; shift
    python3 - "$R/$name.meta.json" "$@" <<'EOF'
import json, sys
data = {}
for p in sys.argv[2:]:
    k, _, v = p.partition("=")
    try:
        data[k] = json.loads(v)
    except ValueError:
        data[k] = v
json.dump(data, open(sys.argv[1], "w"), indent=1)
EOF
}

t=$(date +%s.%N)
loginctl enable-linger "$U" 2>"$R/podman_setup.stderr" || systemctl start "user@$UID_.service" 2>>"$R/podman_setup.stderr"
for _ in $(seq 1 60); do [ -S "$XDG/bus" ] && break; sleep 1; done
delegated="$(cat /sys/fs/cgroup/user.slice/user-$UID_.slice/user@$UID_.service/cgroup.subtree_control 2>/dev/null)"
as_user podman load -q -i "$S/slim.tar" >>"$R/podman_setup.stderr" 2>&1
mkdir -p "$XDG/podman" && chown "$U" "$XDG/podman"
as_user podman system service --time=0 "unix://$SOCK" >>"$R/podman_setup.stderr" 2>&1 &
for _ in $(seq 1 60); do [ -S "$SOCK" ] && break; sleep 1; done
info="$(as_user podman info --format '{{.Host.CgroupsVersion}} {{.Host.CgroupManager}} {{.Host.OCIRuntime.Name}} {{.Version.Version}} rootless={{.Host.Security.Rootless}}' 2>>"$R/podman_setup.stderr")"
rm -rf /home/$U/raw /home/$U/pre && cp -a /srv/raw /home/$U/raw && mkdir -p /home/$U/pre && chown -R "$U:$U" /home/$U/raw /home/$U/pre
meta podman_setup seconds="$(elapsed "$t")" info="$info" delegated="$delegated" socket="$([ -S "$SOCK" ] && echo true || echo false)"

run() {   # run NAME DATASET MEM [VAR=VALUE...]
    local name=$1 ds=$2 mem=$3; shift 3
    local t; t=$(date +%s.%N)
    as_user env NNRUN_PODMAN_HOST="unix://$SOCK" NNRUN_TEST_ID="cgv2-$name" "$@" $PY -m runner.cli preprocess -d "$ds" \
        --mem "$mem" -npfp 2 --no_pp --retry 0 --no-plot --json --runtime podman --image "$IMAGE" \
        --raw /home/$U/raw --preprocessed /home/$U/pre >"$R/$name.json" 2>"$R/$name.stderr"
    meta "$name" exit_code=$? seconds="$(elapsed "$t")" info="$info"
    keep_run_folder "$name"
    echo "[podman] $name: $(head -c 300 "$R/$name.json")"
}
run podman_ok 601 1g
run podman_worker_oom 607 300m NNRUN_TEST_OOM_VICTIM=worker

# Why nnrun runs rootless Podman's container as uid 0 (runner/engines/docker.py host_config_kwargs): which
# user mapping can write the caller's folder (seen: --user 1000:1000 cannot, keep-id and 0:0 can).
{
    for opts in "--user 1000:1000" "--user 1000:1000 --userns keep-id" "--user 0:0"; do
        echo "== podman run $opts"
        # shellcheck disable=SC2086
        as_user podman run --rm $opts -v /home/$U/pre:/data/preprocessed --entrypoint python3 "$IMAGE" -c \
            "import os; p='/data/preprocessed/.probe'; open(p,'w').write('x'); os.unlink(p); print('uid', os.getuid(), 'wrote ok')" 2>&1
        echo "exit $?"
    done
} >"$R/podman_probe.txt" 2>&1
