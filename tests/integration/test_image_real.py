"""The suite's image against the repository's lock: the label, pip freeze, the offline hash-checked install.

These fail when the lock and the image disagree: rebuild the image
(scripts/build-image.sh, i.e. `nnrun image build`) after changing the lock.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from runner.image import LABEL_LOCK_DIGEST, LOCK
from runner.image.lock import compare_freeze, parse_freeze, parse_lock

from .conftest import REPO

pytestmark = pytest.mark.docker


def _docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def test_the_images_lock_label_is_the_repositorys_lock(docker_ready):
    labels = json.loads(_docker("image", "inspect", "-f", "{{json .Config.Labels}}", docker_ready).stdout)
    repo_digest = "sha256:" + hashlib.sha256(LOCK.read_bytes()).hexdigest()
    assert labels.get(LABEL_LOCK_DIGEST) == repo_digest, (
        f"{docker_ready} was built from another lock ({labels.get(LABEL_LOCK_DIGEST)}) than the repository's "
        f"({repo_digest}): rebuild it with scripts/build-image.sh")
    lock = parse_lock(LOCK.read_text())
    assert labels["io.nnrun.torch-version"] == lock.version_of("torch")
    assert labels["io.nnrun.nnunetv2-version"] == lock.version_of("nnunetv2")


# pip list/freeze never show distributions named like a stdlib module (pip's STDLIB_PKGS); the lock has argparse.
PIP_HIDDEN = {"argparse", "wsgiref", "python"}


def _in_image(image: str, *args: str) -> str:
    proc = _docker("run", "--rm", "--network", "none", "--entrypoint", "/opt/venv/bin/python", image, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_pip_freeze_in_the_image_is_the_lock(docker_ready):
    """Every package of the image's venv is the lock's, at the lock's version, and nothing else (pip included)."""
    lock = parse_lock(LOCK.read_text())
    frozen = parse_freeze(_in_image(docker_ready, "-m", "pip", "freeze", "--all", "--disable-pip-version-check"))
    # What pip hides, importlib.metadata shows: take those from there.
    listed = json.loads(_in_image(docker_ready, "-c", "import importlib.metadata as m, json; "
                                  "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"))
    hidden = {name: version for name, version in parse_freeze("\n".join(f"{k}=={v}" for k, v in listed.items())).items()
              if name in PIP_HIDDEN}
    diff = compare_freeze(lock, {**frozen, **hidden})
    assert diff.ok, diff.summary()
    # The same from importlib.metadata alone: every distribution of the venv, none outside the lock.
    diff = compare_freeze(lock, parse_freeze("\n".join(f"{k}=={v}" for k, v in listed.items())))
    assert diff.ok, diff.summary()


def test_the_image_carries_the_lock_it_was_built_from(docker_ready):
    proc = _docker("run", "--rm", "--network", "none", "--entrypoint", "cat", docker_ready,
                   "/opt/nnrun/runner/image/requirements.lock")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == LOCK.read_text()


def test_image_build_with_the_daemon_down_is_infra(tmp_path):
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"}
    proc = subprocess.run([sys.executable, "-m", "runner.cli", "image", "build", "--tag", "nnrun-never:1", "--json",
                           "--cache", str(tmp_path)], capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert proc.returncode == 6, proc.stderr
    data = json.loads(proc.stdout)
    assert data["outcome"] == "infra" and "nonexistent.sock" in data["message"]
    assert proc.stderr.strip().startswith("nnrun: infra: Docker daemon not reachable")
    assert not list(tmp_path.iterdir())              # nothing fetched before the daemon answered
