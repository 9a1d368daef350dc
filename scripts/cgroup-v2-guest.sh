#!/usr/bin/env bash
# A cgroup v2 test machine made from Debian's packages and booted under QEMU
# (software emulation, TCG: this machine's /dev/kvm boots no stock kernel).
# Recipe and measurements: docs/tests.md ("cgroup v2 guest").
#
#   scripts/cgroup-v2-guest.sh build        # idempotent; prints the guest folder
#   scripts/cgroup-v2-guest.sh boot SHARE   # boots the guest with SHARE as 9p tag "share";
#                                           # the guest runs SHARE/payload.sh and powers off
#
# build (as root): installs qemu-system-x86, qemu-utils, debootstrap and e2fsprogs
# with apt when missing; debootstraps Debian bookworm (kernel, systemd, Docker,
# Podman, Python) from the Debian mirror named in the machine's apt sources;
# installs nnrun's Python dependencies into /opt/nnrun-venv of the guest from
# the host's pip (chroot, at native speed); writes the unit that runs the share's
# payload; packs the root into an ext4 disk image.  A second minbase root with
# python3 alone becomes the slim test image's base (a tar for `docker import`).
# Everything lives in $NNRUN_CACHE/cgroup-v2-guest (default /var/cache/nnrun);
# a stamp holding the recipe's hash makes a second run take no time.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "$(id -u)" = 0 ]; then CACHE="${NNRUN_CACHE:-/var/cache/nnrun}"; else CACHE="${NNRUN_CACHE:-$HOME/.cache/nnrun}"; fi
GUEST="$CACHE/cgroup-v2-guest"
SUITE=bookworm
PACKAGES="systemd,systemd-sysv,udev,linux-image-amd64,docker.io,python3,python3-venv,iproute2,procps,kmod,podman,containernetworking-plugins,catatonit,crun,uidmap,slirp4netns,fuse-overlayfs,dbus,dbus-user-session,libpam-systemd"
SLIM_PACKAGES="python3"
# nnrun's own dependencies, read from pyproject.toml (a copy here fell behind once: the guest lacked nibabel
# and every scenario ended in bad_input).
PY_DEPS="$(python3 -c 'import sys, tomllib; print(" ".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
    "$REPO/pyproject.toml")"
# The recipe's hash: a change to any of it rebuilds.
RECIPE="$(printf '%s\n' 3 "$SUITE" "$PACKAGES" "$SLIM_PACKAGES" "$PY_DEPS" | sha256sum | cut -c1-16)"

log() { echo "cgroup-v2-guest: $*" >&2; }

mirror() {
    # The first deb URI serving $SUITE in the machine's apt sources (deb822 or one-line format).
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri="$(awk -v s="$SUITE" '
            /^[[:space:]]*$/ { if (u != "" && ok) { print u; exit } u=""; ok=0; next }
            /^URIs:/ { u=$2 } /^Suites:/ { for (i=2;i<=NF;i++) if ($i==s) ok=1 }
            END { if (u != "" && ok) print u }' "$f" | head -1)"
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    uri="$(grep -h "^deb .* $SUITE " /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '{ for (i=2;i<=NF;i++) if ($i !~ /^\[/) { print $i; exit } }' | head -1)"
    [ -n "$uri" ] || { log "no Debian $SUITE source in /etc/apt/sources.list*"; exit 1; }
    echo "$uri"
}

ensure_tools() {
    local missing=""
    command -v qemu-system-x86_64 >/dev/null || missing="$missing qemu-system-x86"
    command -v qemu-img >/dev/null || missing="$missing qemu-utils"
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing="$missing debootstrap"
    command -v mkfs.ext4 >/dev/null || [ -x /usr/sbin/mkfs.ext4 ] || missing="$missing e2fsprogs"
    if [ -n "$missing" ]; then
        [ "$(id -u)" = 0 ] || { log "missing:$missing (run as root to install them)"; exit 1; }
        log "installing$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends $missing >/dev/null
    fi
}

unmount_under() {   # what an interrupted debootstrap left mounted (proc, sys) below $1
    awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
}

build() {
    # One build at a time: scripts/test.sh starts one in the background while the rest of the suite runs,
    # and the cgroup_v2 tests' own call waits here for it (then finds the stamp).
    mkdir -p "$CACHE"
    exec 9>"$CACHE/cgroup-v2-guest.lock"
    flock 9
    ensure_tools
    if [ -f "$GUEST/stamp" ] && [ "$(cat "$GUEST/stamp")" = "$RECIPE" ] && [ -f "$GUEST/disk.img" ]; then
        echo "$GUEST"; return
    fi
    [ "$(id -u)" = 0 ] || { log "building the guest needs root (debootstrap, chroot)"; exit 1; }
    local t0 m work
    t0=$(date +%s)
    m="$(mirror)"
    mkdir -p "$GUEST"
    work="$GUEST/build.tmp"
    unmount_under "$work"
    rm -rf "$work" "$GUEST/stamp"
    mkdir -p "$work/debs"
    log "debootstrap $SUITE (guest and slim image base, in parallel)"
    /usr/sbin/debootstrap --variant=minbase --cache-dir="$work/debs" --include="$PACKAGES" \
        "$SUITE" "$work/root" "$m" >"$GUEST/debootstrap.log" 2>&1 &
    local p1=$!
    mkdir -p "$work/debs-slim"
    /usr/sbin/debootstrap --variant=minbase --cache-dir="$work/debs-slim" --include="$SLIM_PACKAGES" \
        "$SUITE" "$work/slim" "$m" >"$GUEST/debootstrap-slim.log" 2>&1 &
    local p2=$!
    local rc1=0 rc2=0
    wait "$p1" || rc1=$?
    wait "$p2" || rc2=$?
    [ "$rc1" = 0 ] || { log "debootstrap failed: $GUEST/debootstrap.log"; tail -5 "$GUEST/debootstrap.log" >&2; exit 1; }
    [ "$rc2" = 0 ] || { log "debootstrap (slim) failed: $GUEST/debootstrap-slim.log"; exit 1; }
    log "debootstrap done after $(( $(date +%s) - t0 )) s"

    # The slim image's base: python3 and nothing else.
    rm -rf "$work/slim/var/cache/apt/archives/"*.deb "$work/slim/usr/share/doc" "$work/slim/usr/share/man" \
        "$work/slim/usr/share/locale"
    tar -C "$work/slim" -cf "$work/slim-base.tar" .

    # nnrun's dependencies in the guest, installed by the guest's own python3 in a chroot (native speed).
    python3 -m pip download -q --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
        -d "$work/wheels" $PY_DEPS
    local r="$work/root"
    mkdir -p "$r/tmp/wheels" && cp "$work/wheels/"*.whl "$r/tmp/wheels/"
    # The host pip's configuration (find-links, indexes) means nothing inside the chroot.
    export PIP_CONFIG_FILE=/dev/null; unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT
    chroot "$r" python3 -m venv /opt/nnrun-venv
    # shellcheck disable=SC2086
    chroot "$r" /opt/nnrun-venv/bin/python -m pip install -q --no-index --find-links /tmp/wheels $PY_DEPS
    rm -rf "$r/tmp/wheels"

    # The machine: hostname, a non-root user for rootless Podman, the payload unit.
    echo cgv2 >"$r/etc/hostname"
    echo "127.0.1.1 cgv2" >>"$r/etc/hosts"
    chroot "$r" useradd -m -u 1000 -s /bin/bash runner
    echo "runner:100000:65536" >"$r/etc/subuid"
    echo "runner:100000:65536" >"$r/etc/subgid"
    chroot "$r" passwd -d root >/dev/null
    mkdir -p "$r/share"
    cat >"$r/etc/systemd/system/nnrun-payload.service" <<'EOF'
[Unit]
Description=nnrun cgroup v2 payload from the 9p share
After=local-fs.target docker.service
Wants=docker.service

[Service]
Type=oneshot
ExecStartPre=/bin/mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 share /share
ExecStart=/bin/bash /share/payload.sh
ExecStopPost=/bin/systemctl --no-block poweroff
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF
    chroot "$r" systemctl enable nnrun-payload.service >/dev/null 2>&1
    # No getty, no waiting for a network that is not there.
    chroot "$r" systemctl mask getty@tty1.service serial-getty@ttyS0.service systemd-networkd-wait-online.service \
        >/dev/null 2>&1 || true
    cp -L "$r/boot/vmlinuz" "$work/vmlinuz" 2>/dev/null || cp "$(ls "$r"/boot/vmlinuz-* | head -1)" "$work/vmlinuz"
    cp -L "$r/boot/initrd.img" "$work/initrd.img" 2>/dev/null || cp "$(ls "$r"/boot/initrd.img-* | head -1)" "$work/initrd.img"
    rm -rf "$r/var/cache/apt/archives/"*.deb
    log "mkfs.ext4 (8G sparse)"
    /usr/sbin/mkfs.ext4 -q -F -L root -d "$r" "$work/disk.img" 8G
    mv "$work/disk.img" "$work/vmlinuz" "$work/initrd.img" "$work/slim-base.tar" "$GUEST/"
    rm -rf "$work"
    echo "$RECIPE" >"$GUEST/stamp"
    log "guest built in $(( $(date +%s) - t0 )) s"
    echo "$GUEST"
}

boot() {
    local share="$1" mem="${NNRUN_GUEST_MEM:-6G}"
    [ -f "$GUEST/stamp" ] || { log "no guest: run '$0 build' first"; exit 1; }
    exec qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m "$mem" -smp 2 \
        -kernel "$GUEST/vmlinuz" -initrd "$GUEST/initrd.img" \
        -append 'root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 apparmor=0 quiet systemd.show_status=0' \
        -drive "file=$GUEST/disk.img,format=raw,if=virtio" \
        -virtfs "local,path=$share,mount_tag=share,security_model=none" \
        -nic none -nographic -no-reboot -snapshot
}

case "${1:-}" in
    build) build ;;
    boot) [ -n "${2:-}" ] || { log "usage: $0 boot SHARE"; exit 2; }; boot "$2" ;;
    dir) echo "$GUEST" ;;
    *) log "usage: $0 build | boot SHARE | dir"; exit 2 ;;
esac
