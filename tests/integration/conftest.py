"""Integration suite: a real Docker engine, the real nnrun image, real nnU-Net, real OOM kills.

Every test here is marked ``docker``.  The README's test command
(scripts/test.sh) sets the engine and the image up first; when they are
missing these tests fail (they are the point of the suite) unless
NNRUN_SKIP_DOCKER=1 is set for a quick local run of the pure suite.

Cleanup registry: every test gets its own id (environment variable
NNRUN_TEST_ID, which nnrun copies into the label ``io.nnrun.test-id`` of each
container it starts); after each test the suite asserts that no container
with that id is left, and removes strays so one failure does not cascade.
Other tests running at the same time have other ids, so they never interfere.
The registry covers Podman's containers too (tests/integration/test_podman_real.py
runs nnrun with ``--engine podman``) whenever the ``podman`` command exists.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner import __version__
from runner.demo import make_demo

IMAGE = os.environ.get("NNRUN_IMAGE", f"nnrun:{__version__}")
RUN_LABEL = "io.nnrun.run-id"
TEST_LABEL = "io.nnrun.test-id"
REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/integration" in str(item.fspath) and item.get_closest_marker("slurm") is None:
            item.add_marker(pytest.mark.docker)
    # The cgroup v2 guest's tests last: scripts/test.sh builds the guest in the background meanwhile.
    items.sort(key=lambda item: item.get_closest_marker("cgroup_v2") is not None)


def _docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess | None:
    """The podman command (its local store: the one the rootful or rootless service serves), if installed."""
    if shutil.which("podman") is None:
        return None
    try:
        return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def nnrun_containers() -> list[str]:
    """The containers the current test's nnrun runs started (all of nnrun's outside a test), in Docker and Podman."""
    test_id = os.environ.get("NNRUN_TEST_ID")
    label = f"{TEST_LABEL}={test_id}" if test_id else RUN_LABEL
    out = _docker("ps", "-aq", "--no-trunc", "--filter", f"label={label}", check=False).stdout
    podman = _podman("ps", "-aq", "--no-trunc", "--filter", f"label={label}")
    if podman is not None and podman.returncode == 0:
        out += "\n" + podman.stdout
    return list(dict.fromkeys(line for line in out.split() if line))


def remove_containers(ids) -> None:
    """Force-remove containers by id from whichever engine holds them."""
    ids = list(ids)
    if ids:
        _docker("rm", "-f", *ids, check=False)
        _podman("rm", "-f", "-i", *ids)


@pytest.fixture(scope="session")
def docker_ready():
    if os.environ.get("NNRUN_SKIP_DOCKER") == "1":
        pytest.skip("NNRUN_SKIP_DOCKER=1")
    probe = _docker("info", check=False, timeout=30)
    if probe.returncode != 0:
        pytest.fail("no Docker engine answers: run scripts/setup.sh (scripts/test.sh does it for you)")
    image = _docker("image", "inspect", IMAGE, check=False)
    if image.returncode != 0:
        pytest.fail(f"image {IMAGE} missing: run scripts/build-image.sh")
    return IMAGE


@pytest.fixture(autouse=True)
def no_container_left_behind(request, monkeypatch):
    """The cleanup registry: no test may leave an nnrun container behind."""
    if "docker" not in request.keywords:
        yield
        return
    monkeypatch.setenv("NNRUN_TEST_ID", uuid.uuid4().hex[:16])
    before = set(nnrun_containers())
    yield
    deadline = time.time() + 15
    left = set(nnrun_containers()) - before
    while left and time.time() < deadline:   # removal may still be under way
        time.sleep(0.5)
        left = set(nnrun_containers()) - before
    if left:
        remove_containers(left)
        pytest.fail(f"test left {len(left)} nnrun container(s) behind: {sorted(c[:12] for c in left)}")


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    make_demo(raw)
    return raw


@dataclass
class NnrunResult:
    returncode: int
    report: dict | None
    stderr: str
    stdout: str


def nnrun_cmd(*args: str) -> list[str]:
    """The CLI; runs of the suite's image (NNRUN_IMAGE or nnrun:<version>) unless the test names one."""
    args = list(args)
    head = args[:args.index("--")] if "--" in args else args
    if args and args[0] in ("preprocess", "estimate", "doctor") and "--image" not in head:
        args[1:1] = ["--image", IMAGE]
    return [sys.executable, "-m", "runner.cli", *args]


def run_nnrun(*args: str, env: dict | None = None, timeout: float = 600) -> NnrunResult:
    """Run the real CLI in a subprocess with --json and parse its one JSON object."""
    full_env = {**os.environ, **(env or {})}
    args = list(args)
    cut = args.index("--") if "--" in args else len(args)     # --json is nnrun's, not nnU-Net's
    proc = subprocess.run(nnrun_cmd(*args[:cut], "--json", *args[cut:]), capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=REPO)
    return NnrunResult(proc.returncode, parse_single_json(proc.stdout), proc.stderr, proc.stdout)


def parse_single_json(stdout: str) -> dict | None:
    text = stdout.strip()
    if not text:
        return None
    obj = json.loads(text)          # fails if stdout holds anything but one JSON object
    assert isinstance(obj, dict)
    return obj


def nnrun_stderr_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("nnrun:")]
