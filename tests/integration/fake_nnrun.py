"""A stand-in for ``python -m runner.cli preprocess ... --json`` in real Slurm jobs (no nnU-Net).

The real-Slurm test points ``NNRUN_SLURM_PYTHON`` at a copy of this file, so
the batch scripts nnrun renders and submits run it as ``"$PYTHON" -m
runner.cli.app preprocess -d D --mem M ... [--no_pp | --shard K/N]``.  It keeps
nnrun's contract (one JSON report on stdout, exit code 3 after an OOM kill)
with a real allocation in a real child process, so Slurm's cgroup really
OOM-kills it:

* ``--no_pp`` (the plan job): writes ``<preprocessed>/<Dataset>/nnUNetPlans.json``;
  with ``$FAKE_NNRUN_PLAN_ALLOC_MB`` it first allocates that much itself (killed
  without a report, as when nnrun's main process is the victim).
* ``--shard K/N`` with K in ``$FAKE_NNRUN_OOM_SHARDS`` (e.g. ``1``): a child
  process allocates and touches ``$FAKE_NNRUN_ALLOC_MB`` MiB, as an nnU-Net
  worker would on a large case; killed by SIGKILL -> ``outcome: oom``,
  ``victim_case`` ``case_<K>``, exit 3; else ``ok``.
* Every finished shard leaves ``.fake-shard-K`` in the dataset folder;
  ``dataset_complete`` is true once all N are there.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path


def opt(argv, flag, default=None):
    return argv[argv.index(flag) + 1] if flag in argv else default


def main(argv):
    assert argv[:3] == ["-m", "runner.cli", "preprocess"], argv
    argv = argv[3:]
    mem = opt(argv, "--mem")
    sys.path.insert(0, os.environ.get("FAKE_NNRUN_REPO", "."))
    from runner.dataset import find_dataset_folder, parse_dataset_id
    from runner.units import parse_mem

    name = find_dataset_folder(opt(argv, "--raw"), parse_dataset_id(opt(argv, "-d"))).name
    pre = Path(opt(argv, "--preprocessed")) / name
    pre.mkdir(parents=True, exist_ok=True)
    report = {"schema_version": 1, "outcome": "ok", "exit_code": 0, "message": "finished", "phase": None,
              "victim_case": None, "limit_bytes": parse_mem(mem), "peak_anon_bytes": None,
              "recommendation": None, "recommendation_argv": None, "runtime": opt(argv, "--runtime"),
              "run_dir": None, "shard": opt(argv, "--shard"), "dataset_complete": None}
    if "--no_pp" in argv:
        if os.environ.get("FAKE_NNRUN_PLAN_ALLOC_MB"):
            # nnrun's own process over the limit: killed with no report at all.
            b = bytearray(int(os.environ["FAKE_NNRUN_PLAN_ALLOC_MB"]) * 1024 * 1024)
            for i in range(0, len(b), 4096):
                b[i] = 1
        (pre / "nnUNetPlans.json").write_text("{}\n")
        print(json.dumps(report))
        return 0
    k, n = (int(x) for x in report["shard"].split("/"))
    oom_shards = {int(x) for x in os.environ.get("FAKE_NNRUN_OOM_SHARDS", "").split(",") if x.strip()}
    if k in oom_shards:
        mb = int(os.environ.get("FAKE_NNRUN_ALLOC_MB", "150"))
        child = subprocess.run([sys.executable, "-c",
                                f"b = bytearray({mb} * 1024 * 1024)\n"
                                f"for i in range(0, len(b), 4096): b[i] = 1\n"])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        report["peak_anon_bytes"] = peak
        if child.returncode == -9:
            report.update(outcome="oom", exit_code=3, phase="preprocessing", victim_case=f"case_{k}",
                          victims=[{"role": "worker", "pid": None, "case": f"case_{k}"}],
                          message=f"the kernel OOM-killed a worker process during preprocessing (case case_{k})")
            print(json.dumps(report))
            return 3
    (pre / f".fake-shard-{k}").write_text("done\n")
    report["dataset_complete"] = all((pre / f".fake-shard-{i}").exists() for i in range(n))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
