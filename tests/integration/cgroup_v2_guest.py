"""The cgroup v2 test machine: build it (scripts/cgroup-v2-guest.sh), fill its share, boot it once, read its results.

One boot runs the whole payload (tests/integration/cgv2/payload.sh): QEMU emulates
the CPU (TCG), so each boot costs about a minute before the first scenario runs.
The share holds nnrun's runner package from this checkout, the slim test image
(built on the host from the guest's minbase python3 root, `docker save`), the
datasets and the payload; the guest writes ``results/`` back.  Not a test module.
"""
from __future__ import annotations

import compileall
import json
import os
import platform
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from runner import __version__
from runner.demo import CaseSpec, make_dataset

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "cgv2"
SCRIPT = REPO / "scripts" / "cgroup-v2-guest.sh"
IMAGE = "nnrun-cgv2:test"
BOOT_TIMEOUT_S = float(os.environ.get("NNRUN_CGV2_TIMEOUT", "1200"))
# Rootless Podman runs alongside the Docker scenarios (3-7 minutes of the emulated CPU, overlapped);
# NNRUN_CGV2_PODMAN=0 leaves it out.
PODMAN = os.environ.get("NNRUN_CGV2_PODMAN", "1") != "0"
SCENARIOS = ("host", "cgroupfs", "podman") if PODMAN else ("host", "cgroupfs")

# dataset id -> (name, fake-nnunet.json): what each case of the stand-in does (tests/integration/cgv2/fake_nnunetv2).
DATASETS: dict[int, tuple[str, dict]] = {
    601: ("Ok", {}),
    602: ("WorkerOom", {"cases": {"case001": {"alloc_mb": 600, "hold_s": 3, "sleep_s": 0.5}}}),
    603: ("MainOom", {"main_alloc_mb": 600}),
    604: ("DockerKill", {"cases": {"case000": {"sleep_s": 120}}}),
    605: ("WorkerKilled", {"cases": {"case001": {"die": "SIGKILL", "sleep_s": 0.5}}}),
    606: ("HostOom", {"cases": {"case001": {"alloc_mb": 600, "hold_s": 3, "sleep_s": 0.5}}}),
    607: ("PodmanOom", {"cases": {"case001": {"alloc_mb": 600, "hold_s": 3, "sleep_s": 0.5}}}),
}
CASES = [CaseSpec((16, 16, 8), (1.0, 1.0, 2.5)) for _ in range(3)]


class GuestUnavailable(Exception):
    """QEMU cannot run here at all (the tests skip with this reason)."""


@dataclass
class GuestRun:
    share: Path
    results: dict[str, dict] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    console_tail: str = ""
    payload_log: str = ""

    def report(self, name: str) -> dict:
        return self.results.get(name, {})

    def meta(self, name: str) -> dict:
        return self.results.get(f"{name}.meta", {})


def unavailable_reason() -> str | None:
    """Why QEMU cannot run here at all, or None."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the cgroup v2 guest needs an x86_64 Linux host (this is {platform.system()} {platform.machine()})"
    if os.geteuid() != 0 and shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is missing and only root can install it (apt-get install qemu-system-x86)"
    if os.environ.get("NNRUN_CGROUP_V2") == "0":
        return "left out with NNRUN_CGROUP_V2=0 (docs/tests.md, \"cgroup v2 guest\")"
    return None


def build() -> tuple[Path, float]:
    t = time.monotonic()
    out = subprocess.run(["bash", str(SCRIPT), "build"], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/cgroup-v2-guest.sh build failed:\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1]), time.monotonic() - t


def _docker(*args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=timeout, **kw)


# Not needed to run python3: apt's lists and code, perl, iconv modules, docs (the image loads ~2x faster in the guest).
# The standard library's compiled modules stay (6 MB): without them every process in the container compiles
# json, subprocess, multiprocessing... from source, 0.12 s per process here and many times that under TCG.
SLIM_DROP = ("var/lib/apt/", "var/cache/", "usr/lib/apt/", "usr/lib/x86_64-linux-gnu/gconv/",
             "usr/lib/x86_64-linux-gnu/perl", "usr/bin/perl", "usr/share/doc/", "usr/share/man/", "usr/share/locale/",
             "usr/share/info/", "usr/share/perl5/", "usr/lib/python3.11/pydoc_data/")
SLIM_VERSION = "slim2"      # bump when SLIM_DROP changes: the cached base image is named after it


def _slim_tar(source: Path, target: Path) -> None:
    with tarfile.open(source) as src, tarfile.open(target, "w") as dst:
        for member in src:
            name = member.name[2:] if member.name.startswith("./") else member.name
            if any(name.startswith(prefix) for prefix in SLIM_DROP):
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)


def slim_image(guest: Path, share: Path) -> None:
    """The slim test image on the host (base: the guest build's minbase python3 root), saved into the share."""
    base = f"nnrun-cgv2-base:{(guest / 'stamp').read_text().strip()}-{SLIM_VERSION}"
    if subprocess.run(["docker", "image", "inspect", base], capture_output=True).returncode != 0:
        slim = share / "slim-base.tar"
        _slim_tar(guest / "slim-base.tar", slim)
        _docker("import", str(slim), base)
        slim.unlink()
    ctx = share / "image-context"
    shutil.copytree(REPO / "runner", ctx / "runner", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(HERE / "fake_nnunetv2", ctx / "fake_nnunetv2", ignore=shutil.ignore_patterns("__pycache__"))
    _docker("build", "-q", "-f", str(HERE / "Dockerfile.slim"), "--build-arg", f"BASE={base}",
            "--build-arg", f"NNRUN_VERSION={__version__}", "-t", IMAGE, str(ctx))
    shutil.rmtree(ctx)
    _docker("save", "-o", str(share / "slim.tar"), IMAGE)
    _docker("rmi", IMAGE)      # the guest loads the saved tar; only the cached base stays on the host
    (share / "slim.tar").chmod(0o644)   # rootless Podman loads it as a non-root user


def fill_share(guest: Path, share: Path, scenarios: tuple[str, ...] = SCENARIOS) -> None:
    shutil.copytree(REPO / "runner", share / "src" / "runner", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(HERE / "fake_nnunetv2", share / "fake", ignore=shutil.ignore_patterns("__pycache__"))
    # Compiled here (the host's Python is 3.11 as the guest's): under TCG each nnrun command in the guest would
    # otherwise compile runner's modules from source, and the non-root Podman user cannot write __pycache__.
    for folder in (share / "src", share / "fake"):
        compileall.compile_dir(str(folder), quiet=1)
    shutil.copy(HERE / "payload.sh", share / "payload.sh")
    shutil.copy(HERE / "podman-rootless.sh", share / "podman-rootless.sh")
    # --runtime host: the guest's python3 with the stand-in for nnU-Net on its path.
    fake_python = share / "fake-python"
    fake_python.write_text('#!/bin/sh\nexport PYTHONPATH="/share/fake${PYTHONPATH:+:$PYTHONPATH}"\nexec python3 "$@"\n')
    fake_python.chmod(0o755)
    (share / "scenarios").mkdir()
    for s in scenarios:
        (share / "scenarios" / s).write_text("1\n")
    for ds, (name, spec) in DATASETS.items():
        folder = make_dataset(share / "raw", ds, name, CASES)
        (folder / "fake-nnunet.json").write_text(json.dumps(spec))
    slim_image(guest, share)
    os.chmod(share, 0o777)


def boot(guest: Path, share: Path, timeout_s: float = BOOT_TIMEOUT_S) -> float:
    """Boot once; the guest runs the payload and powers off.  QEMU is killed in every case."""
    t = time.monotonic()
    with open(share / "console.log", "wb") as console:
        proc = subprocess.Popen(["bash", str(SCRIPT), "boot", str(share)], stdout=console, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    return time.monotonic() - t


def read_results(run: GuestRun) -> None:
    for f in sorted((run.share / "results").glob("*.json")):
        try:
            run.results[f.name[: -len(".json")]] = json.loads(f.read_text() or "{}")
        except ValueError:
            run.results[f.name[: -len(".json")]] = {"unparsable": f.read_text()[:2000]}
    console = run.share / "console.log"
    run.console_tail = console.read_text(errors="replace")[-4000:] if console.exists() else ""
    log = run.share / "payload.log"
    run.payload_log = log.read_text(errors="replace") if log.exists() else ""


def run_guest(share: Path) -> GuestRun:
    reason = unavailable_reason()
    if reason:
        raise GuestUnavailable(reason)
    run = GuestRun(share=share)
    guest, run.timings["build_s"] = build()
    t = time.monotonic()
    fill_share(guest, share)
    run.timings["share_s"] = time.monotonic() - t
    run.timings["boot_total_s"] = boot(guest, share)
    read_results(run)
    return run
