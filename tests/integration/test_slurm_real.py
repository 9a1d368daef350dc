"""`nnrun slurm submit` / `status` against a real Slurm (marker ``slurm``; scripts/ensure-slurm.sh starts one).

Real sbatch, real array jobs, real cgroup OOM kills by Slurm's task/cgroup,
real scontrol and ``sacct -c`` output.  What runs in the jobs is not nnU-Net
but tests/integration/fake_nnrun.py (through ``NNRUN_SLURM_PYTHON``, in the
scripts nnrun renders): it keeps nnrun's JSON contract and allocates real
memory in a child process, so these tests prove the Slurm side end to end in
seconds.  The full nnU-Net array (``--runtime host``) is a separate test.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.backends.slurm.client import SlurmClient, status
from runner.backends.slurm.scripts import INDEX_ENV, PYTHON_ENV, load_submission
from runner.demo import CaseSpec, make_dataset

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).resolve().parent / "fake_nnrun.py"


@pytest.fixture(scope="session")
def slurm_ready():
    if os.environ.get("NNRUN_SKIP_SLURM") == "1":
        pytest.skip("NNRUN_SKIP_SLURM=1")
    if shutil.which("sbatch") is None:
        pytest.fail("no Slurm here: run scripts/ensure-slurm.sh as root (scripts/test.sh does it)")
    p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if p.returncode != 0 or not p.stdout.strip():
        pytest.fail(f"Slurm does not answer (sinfo: {p.stderr.strip()}): run scripts/ensure-slurm.sh")


@pytest.fixture
def job_env(tmp_path, slurm_ready):
    raw = tmp_path / "raw"
    make_dataset(raw, 501, "Tiny", [CaseSpec((12, 10, 6), (0.8, 0.8, 3.0)), CaseSpec((10, 12, 5), (0.8, 0.8, 2.5)),
                                    CaseSpec((11, 11, 4), (0.8, 0.8, 4.0))])
    fake = tmp_path / "python"
    fake.write_text(f"#!{sys.executable}\n" + FAKE.read_text())
    fake.chmod(0o755)
    env = {**os.environ, PYTHON_ENV: str(fake), INDEX_ENV: str(tmp_path / "index"),
           "FAKE_NNRUN_REPO": str(REPO), "PYTHONPATH": str(REPO)}
    jobs: list[str] = []
    yield {"raw": raw, "pre": tmp_path / "pre", "env": env, "jobs": jobs}
    if jobs:   # nothing of a test may stay in the queue
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)


def nnrun(env, *args, timeout=300) -> tuple[int, dict, str]:
    p = subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, json.loads(p.stdout), p.stderr


def submit(job_env, *args, env=None):
    code, data, err = nnrun(env or job_env["env"], "slurm", "submit", "-d", "501", "--raw", str(job_env["raw"]),
                            "--preprocessed", str(job_env["pre"]), "--json", *args)
    assert code == 0, err
    job_env["jobs"] += [j for j in (data["plan_job_id"], data["array_job_id"]) if j]
    return data


def wait_status(job_env, job_id):
    return nnrun(job_env["env"], "slurm", "status", job_id, "--wait", "--interval", "0.5", "--timeout", "240", "--json")


def test_array_with_one_task_over_its_mem_then_resubmit_only_that_shard(job_env):
    env = {**job_env["env"], "FAKE_NNRUN_OOM_SHARDS": "1", "FAKE_NNRUN_ALLOC_MB": "130"}
    sub = submit(job_env, "--mem", "100m", "--shards", "3", env=env)
    code, st, err = wait_status(job_env, sub["array_job_id"])

    # Slurm's own verdict, read back from scontrol: task 1 OUT_OF_MEMORY, the others COMPLETED.
    assert code == 3, err
    assert st["finished"] and st["outcome"] == "oom" and st["sources"] == ["scontrol"]
    tasks = {t["shard"]: t for t in st["tasks"]}
    assert {k: t["slurm_state"] for k, t in tasks.items()} == {0: "COMPLETED", 1: "OUT_OF_MEMORY", 2: "COMPLETED"}
    assert tasks[1]["slurm_exit_code"] == "0:125" and tasks[1]["slurm_reason"] == "OutOfMemory"
    assert tasks[1]["slurm_id"] == f"{sub['array_job_id']}_1" and tasks[1]["victim_case"] == "case_1"
    assert st["plan"]["slurm_state"] == "COMPLETED" and st["oom_shards"] == [1] and st["failed_shards"] == [1]
    assert "oom-kill event" in Path(tasks[1]["output_path"]).read_text()
    argv = st["recommendation_argv"]
    assert argv[argv.index("--only-shards") + 1] == "1" and argv[argv.index("--mem") + 1] == "192m"
    assert "shard 1" in err and "OUT_OF_MEMORY" in err

    # The same verdict from the jobcomp file (sacct -c), as after scontrol forgot the jobs.
    record = load_submission(st["submission_dir"])
    again = status(record, SlurmClient(), sources=("sacct",))
    assert again.sources == ["sacct -c"]
    assert [(v.shard, v.slurm_state, v.outcome.value) for v in again.tasks] == \
        [(0, "COMPLETED", "ok"), (1, "OUT_OF_MEMORY", "oom"), (2, "COMPLETED", "ok")]
    assert again.recommendation_argv == argv

    # The printed command, as is: only shard 1, with more memory; it completes the dataset.
    resub = submit(job_env, *argv[argv.index("--mem"):], env=env)
    assert resub["plan_job_id"] is None and resub["array"] == "1"
    code, st2, err2 = wait_status(job_env, resub["array_job_id"])
    assert code == 0, err2
    assert [(t["shard"], t["slurm_state"], t["outcome"]) for t in st2["tasks"]] == [(1, "COMPLETED", "ok")]
    assert st2["dataset_complete"] is True and st2["recommendation"] is None


def test_plan_job_oom_cancels_the_array(job_env):
    env = {**job_env["env"], "FAKE_NNRUN_PLAN_ALLOC_MB": "150"}
    sub = submit(job_env, "--mem", "100m", "--shards", "2", env=env)
    code, st, err = wait_status(job_env, str(sub["plan_job_id"]))
    assert code == 3, err
    assert st["plan"]["slurm_state"] == "OUT_OF_MEMORY" and st["plan"]["outcome"] == "oom"
    assert [(t["slurm_state"], t["outcome"]) for t in st["tasks"]] == [("CANCELLED", None)] * 2
    argv = st["recommendation_argv"]
    assert "--only-shards" not in argv and argv[argv.index("--mem") + 1] == "192m"
