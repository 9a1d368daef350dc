"""The whole path on a real Slurm: real nnU-Net in array tasks (``--runtime host``), one shard OOM-killed by Slurm.

A demo-generator dataset with one large case (its preprocessing worker peaks
near 1.9 GiB) and small ones.  The case -> shard map puts the large case
alone in shard 0.  At ``--mem 1800m`` the plan job and the small shards fit;
Slurm's task/cgroup OOM-kills shard 0's worker.  ``nnrun slurm status``
reports that shard as OUT_OF_MEMORY with its case; its printed command
resubmits only that shard with more memory and completes the dataset, which
``nnrun merge`` then checks.  Workers are pinned (-np 1 -npfp 1): with
nnrun's defaults the estimate would refuse the large case up front instead
(``bad_input``), which is the behaviour users get, but not a Slurm OOM kill.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from runner.demo import CaseSpec, make_dataset
from tests.integration.test_host_runtime_real import host_python  # noqa: F401 - the session fixture
from tests.integration.test_slurm_real import REPO, nnrun, slurm_ready  # noqa: F401

pytestmark = pytest.mark.slurm
SMALL = CaseSpec((96, 96, 40), (0.8, 0.8, 1.5))
BIG = CaseSpec((288, 288, 120), (0.8, 0.8, 3.0))


def test_real_array_one_shard_oom_killed_by_slurm_then_resubmitted(slurm_ready, host_python, tmp_path):  # noqa: F811
    started = time.time()
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    make_dataset(raw, 503, "SlurmMixed", [SMALL, SMALL, BIG, SMALL, SMALL])
    env = {**os.environ, "NNRUN_SLURM_INDEX": str(tmp_path / "index")}
    common = ["-d", "503", "--raw", str(raw), "--preprocessed", str(pre), "--host-python", host_python,
              "-c", "3d_fullres", "-np", "1", "-npfp", "1", "--json"]
    jobs: list[str] = []
    try:
        code, sub, err = nnrun(env, "slurm", "submit", "--mem", "1800m", "--shards", "3", *common)
        assert code == 0, err
        jobs += [sub["plan_job_id"], sub["array_job_id"]]
        code, st, err = nnrun(env, "slurm", "status", sub["array_job_id"], "--wait", "--interval", "1",
                              "--timeout", "400", "--json", timeout=450)
        print(err, file=sys.stderr)                  # the human diagnosis, in the test log
        assert code == 3, err
        assert st["plan"]["slurm_state"] == "COMPLETED" and st["plan"]["outcome"] == "ok"
        tasks = {t["shard"]: t for t in st["tasks"]}
        assert {k: t["slurm_state"] for k, t in tasks.items()} == \
            {0: "OUT_OF_MEMORY", 1: "COMPLETED", 2: "COMPLETED"}, err
        assert tasks[0]["outcome"] == "oom" and tasks[0]["victim_case"] == "case002"
        assert st["oom_shards"] == [0] and tasks[1]["outcome"] == tasks[2]["outcome"] == "ok"
        assert "shard 0" in err and "case002" in err and "OUT_OF_MEMORY" in err
        argv = st["recommendation_argv"]
        assert argv[argv.index("--only-shards") + 1] == "0"
        new_mem = argv[argv.index("--mem") + 1]

        # nnrun merge names exactly the missing case's shard.
        merge = subprocess.run([sys.executable, "-m", "runner.cli", "merge", "-d", "503", "--raw", str(raw),
                                "--preprocessed", str(pre), "-c", "3d_fullres"], capture_output=True, text=True,
                               cwd=REPO, env=env, timeout=120)
        assert merge.returncode == 2 and "shard 0/3: case002" in merge.stdout, merge.stdout + merge.stderr

        # The printed resubmission, as is (plus the host Python): only shard 0, with more memory.
        command = argv[1:] if argv[0] == "nnrun" else argv
        if "--host-python" not in command:
            command += ["--host-python", host_python]
        code, resub, err = nnrun(env, *command, "--json")
        assert code == 0, err
        assert resub["plan_job_id"] is None and resub["array"] == "0"
        jobs.append(resub["array_job_id"])
        code, st2, err = nnrun(env, "slurm", "status", resub["array_job_id"], "--wait", "--interval", "1",
                               "--timeout", "300", "--json", timeout=350)
        assert code == 0, err
        assert [(t["shard"], t["slurm_state"], t["outcome"]) for t in st2["tasks"]] == [(0, "COMPLETED", "ok")]
        assert st2["dataset_complete"] is True
        merge = subprocess.run([sys.executable, "-m", "runner.cli", "merge", "-d", "503", "--raw", str(raw),
                                "--preprocessed", str(pre), "-c", "3d_fullres"], capture_output=True, text=True,
                               cwd=REPO, env=env, timeout=120)
        assert merge.returncode == 0, merge.stderr
        print(f"real Slurm array test: {time.time() - started:.0f} s, resubmitted with --mem {new_mem}",
              file=sys.stderr)
    finally:
        subprocess.run(["scancel", *[j for j in jobs if j]], capture_output=True, timeout=30)
