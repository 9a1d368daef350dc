"""nnrun as a user installs it: a wheel into a fresh virtualenv outside the repository, then only that venv's nnrun.

Builds the wheel (`pip wheel --no-deps .`), makes a venv in a temporary folder,
installs the wheel there (its dependencies from the normal index), and then,
with the current folder outside the repository and PYTHONPATH unset, runs
`nnrun --version`, `nnrun doctor` (image missing: it names `nnrun image
build`), `nnrun image build` (the image recipe and lock from the installed
package: tag nnrun-wheeltest:<version>, so the suite's image stays), `nnrun
doctor` again, `nnrun make-demo`, `nnrun preprocess ... -c 3d_fullres` and
`nnrun report`.  The test image is removed at the end.  Each step's time is
printed (pytest -s shows them).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import __version__
from runner.image import LABEL_LOCK_DIGEST, LOCK
from tests.integration.conftest import REPO

pytestmark = pytest.mark.docker

TAG = f"nnrun-wheeltest:{__version__}"


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "NNRUN_IMAGE") and not k.startswith("nnUNet_")}
    return env


def _step(name: str, cmd: list[str], cwd: Path, timings: dict, timeout: float = 900,
          ok_codes: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    t = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=_clean_env(), timeout=timeout)
    timings[name] = round(time.monotonic() - t, 1)
    print(f"--- {name} ({timings[name]} s, exit {proc.returncode}): {' '.join(cmd)}")
    print(proc.stdout[-3000:])
    print(proc.stderr[-3000:], file=sys.stderr)
    assert proc.returncode in ok_codes, f"{name}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture
def remove_test_image():
    yield
    subprocess.run(["docker", "image", "rm", "-f", TAG], capture_output=True, timeout=120)


def test_a_wheel_in_a_fresh_venv_builds_the_image_and_preprocesses(docker_ready, tmp_path_factory, remove_test_image):
    root = tmp_path_factory.mktemp("wheel-install")
    assert not str(root).startswith(str(REPO))
    timings: dict[str, float] = {}
    dist, venv, work = root / "dist", root / "venv", root / "work"
    work.mkdir()

    _step("pip wheel", [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(dist)],
          root, timings)
    wheels = sorted(dist.glob("nnrun-*.whl"))
    assert len(wheels) == 1, wheels
    listing = subprocess.run([sys.executable, "-m", "zipfile", "-l", str(wheels[0])], capture_output=True,
                             text=True).stdout
    for packaged in ("runner/image/Dockerfile", "runner/image/requirements.lock", "runner/incontainer/supervisor.py"):
        assert packaged in listing

    _step("venv", [sys.executable, "-m", "venv", str(venv)], root, timings)
    _step("pip install", [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheels[0])], root, timings)
    nnrun = str(venv / "bin" / "nnrun")
    where = _step("import", [str(venv / "bin" / "python"), "-c", "import runner; print(runner.__file__)"], work, timings)
    assert str(venv) in where.stdout and str(REPO) not in where.stdout

    version = _step("nnrun --version", [nnrun, "--version"], work, timings)
    assert version.stdout.strip() == __version__

    subprocess.run(["docker", "image", "rm", "-f", TAG], capture_output=True, timeout=120)
    before = _step("nnrun doctor (no image)", [nnrun, "doctor", "--image", TAG, "--json"], work, timings,
                   ok_codes=(6,))
    image_check = next(c for c in json.loads(before.stdout)["checks"] if c["name"] == "image")
    assert image_check["status"] == "fail" and f"nnrun image build --tag {TAG}" in image_check["advice"]

    built = _step("nnrun image build", [nnrun, "image", "build", "--tag", TAG, "--json"], work, timings, timeout=1800)
    data = json.loads(built.stdout)
    lock_digest = "sha256:" + hashlib.sha256(LOCK.read_bytes()).hexdigest()
    assert data["outcome"] == "ok" and data["tag"] == TAG and data["lock_digest"] == lock_digest
    assert data["labels"][LABEL_LOCK_DIGEST] == lock_digest

    after = _step("nnrun doctor", [nnrun, "doctor", "--image", TAG, "--json"], work, timings)
    checks = {c["name"]: c for c in json.loads(after.stdout)["checks"]}
    assert checks["image"]["status"] == "ok" and checks["image"]["data"]["lock_matches"] is True
    assert checks["oom probe"]["status"] == "ok"

    raw, pre = root / "raw", root / "pre"
    _step("nnrun make-demo", [nnrun, "make-demo", "--raw", str(raw)], work, timings)
    run = _step("nnrun preprocess", [nnrun, "preprocess", "-d", "501", "--mem", "6g", "--image", TAG,
                                     "--raw", str(raw), "--preprocessed", str(pre), "-c", "3d_fullres", "--json"],
                work, timings, timeout=1800)
    report = json.loads(run.stdout)
    assert report["outcome"] == "ok", report
    run_dir = Path(report["run_dir"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["lock"] == {"image_digest": lock_digest, "nnrun_digest": lock_digest, "matches": True}
    shown = _step("nnrun report", ["sh", "-c", f"'{nnrun}' report '{run_dir}' | head"], work, timings)
    assert shown.stdout.startswith("nnrun: ok")

    print("timings (s):", json.dumps(timings))
    shutil.rmtree(root, ignore_errors=True)
