"""``--runtime host``: nnU-Net as processes on this node, under a real memory cgroup limit (as in a Slurm job).

The same supervisor, agent and diagnosis as in a container; the cap is the
surrounding cgroup's, and a real kernel OOM kill inside it is diagnosed with
the victim's case.  Needs root (to make the cgroup) and a Python with nnunetv2
(scripts/host-env.sh makes one from the image's wheelhouse).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.cgroup_jail import memory_cgroup
from tests.integration.conftest import REPO, nnrun_cmd, parse_single_json
from tests.integration.test_preprocess_real import FAST, _native_run
from tests.integration.treecompare import compare_trees

pytestmark = [pytest.mark.docker, pytest.mark.skipif(os.geteuid() != 0, reason="making a memory cgroup needs root")]


@pytest.fixture(scope="session")
def host_python() -> str:
    given = os.environ.get("NNRUN_HOST_PYTHON")
    if given:
        return given
    proc = subprocess.run(["bash", str(REPO / "scripts" / "host-env.sh")], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"scripts/host-env.sh failed: {proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def _run_in(prefix: list[str], *args: str, env: dict | None = None) -> tuple[int, dict | None, str]:
    proc = subprocess.run([*prefix, *nnrun_cmd(*args, "--json")], capture_output=True, text=True, cwd=REPO,
                          timeout=600, env={**os.environ, **(env or {})})
    return proc.returncode, parse_single_json(proc.stdout), proc.stderr


def _args(demo_raw, pre, mem, host_python, *extra) -> list[str]:
    return ["preprocess", "-d", "501", "--mem", mem, "--raw", str(demo_raw), "--preprocessed", str(pre),
            "--runtime", "host", "--host-python", host_python, "--no-plot", "--skip-file-check", *FAST, *extra]


def test_ok_run_under_the_jobs_limit_is_identical_to_native(docker_ready, demo_raw, tmp_path, host_python):
    pre = tmp_path / "pre"
    roots_before = set(Path(tempfile.gettempdir()).glob("nnrun-host-*"))
    with memory_cgroup(4 << 30) as (_, inside):
        code, report, stderr = _run_in(inside, *_args(demo_raw, pre, "4g", host_python, "-np", "2", "-npfp", "2"))
    assert code == 0, stderr[-3000:]
    assert report["outcome"] == "ok" and report["runtime"] == "host"
    assert report["limit_bytes"] == 4 << 30 and report["cgroup_reader"] == "host"
    assert 0 < report["peak_anon_bytes"] < 4 << 30
    assert report["monitor"]["samples"] > 10
    assert {c["case"] for c in report["cases"] if c["phase"] == "preprocessing"} == {f"case{i:03d}" for i in range(6)}
    native = tmp_path / "native"
    _native_run(demo_raw, native, *FAST, "-np", "2", "-npfp", "2")
    assert compare_trees(pre / "Dataset501_Demo", native / "Dataset501_Demo") == []
    # The private root of symlinks is gone (and the data it pointed to is not).
    assert set(Path(tempfile.gettempdir()).glob("nnrun-host-*")) == roots_before


def test_a_worker_oom_kill_under_the_jobs_limit_names_the_case(docker_ready, demo_raw, tmp_path, host_python):
    pre = tmp_path / "pre"
    with memory_cgroup(1500 << 20) as (_, inside):
        code, report, stderr = _run_in(inside, *_args(demo_raw, pre, "1500m", host_python, "-np", "4", "-npfp", "2"),
                                       env={"NNRUN_TEST_OOM_VICTIM": "worker"})
    assert code == 3, stderr[-3000:]
    assert report["outcome"] == "oom" and report["oom_source"] == "cgroup" and report["oom_kills"] >= 1
    assert report["phase"] == "preprocessing" and report["configuration"] == "3d_fullres"
    assert report["victim"] == "worker" and report["victim_case"] in report["cases_in_flight"]
    assert report["cases_exact"] is True
    # Fewer workers under the job's limit: at most half of 4, fewer when the estimate fits fewer.
    argv = report["recommendation_argv"]
    assert 1 <= int(argv[argv.index("-np") + 1]) <= 2 and argv[argv.index("--mem") + 1] == "1500m"
    assert "--runtime host" in report["recommendation"]
    # No half-written case under a final name.
    out = pre / "Dataset501_Demo"
    assert not (out / "nnUNetPlans_3d_fullres").exists()            # still staged, never moved into place
    assert not list(out.rglob("*.nnrun-tmp*")) or all(".nnrun" in p.parts for p in out.rglob("*.nnrun-tmp*"))


def test_no_memory_limit_is_refused(docker_ready, demo_raw, tmp_path, host_python):
    with memory_cgroup(None) as (_, inside):
        code, report, stderr = _run_in(inside, *_args(demo_raw, tmp_path / "pre", "2g", host_python))
    assert code == 6, stderr
    assert report["outcome"] == "infra" and "no memory limit" in report["message"]
    assert "Traceback" not in stderr


def test_a_python_without_nnunet_is_refused(docker_ready, demo_raw, tmp_path):
    with memory_cgroup(2 << 30) as (_, inside):
        code, report, stderr = _run_in(inside, *_args(demo_raw, tmp_path / "pre", "2g", sys.executable))
    assert code == 6, stderr
    assert "cannot import nnunetv2" in report["message"] and "pip install nnunetv2" in report["message"]
