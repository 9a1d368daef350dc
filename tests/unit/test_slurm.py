"""runner.backends.slurm (scripts, parsing, diagnosis, client) and `nnrun slurm`: batch scripts,
parsers of real Slurm output, the diagnosis, the CLI.

The parser and diagnosis tests read outputs captured on a real single-node
Slurm 22.05 (tests/fixtures/slurm/, see SOURCES.md there).  Where Slurm itself
is needed (scontrol, sacct, sbatch), a runner that replays those captures
stands in; the real cluster is exercised by tests/integration/test_slurm_real.py.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runner.backends.slurm import diagnosis
from runner.backends.slurm.client import SlurmClient, status
from runner.backends.slurm.diagnosis import SlurmDiagnosis, TaskView, build_views, classify, diagnose, render_status
from runner.backends.slurm.parsing import (
    JobState,
    expand_array_range,
    parse_sacct,
    parse_sbatch_parsable,
    parse_scontrol_jobs,
    parse_scontrol_line,
    parse_squeue,
    states_from_sacct,
    states_from_scontrol,
    states_from_squeue,
)
from runner.backends.slurm.scripts import (
    INDEX_ENV,
    PYTHON_ENV,
    SubmitOptions,
    array_spec,
    index_add,
    index_dir,
    index_lookup,
    load_submission,
    parse_job_arg,
    parse_task_json,
    read_task_files,
    render_plan_script,
    render_task_script,
    slurm_mem,
    submission_record,
)
from runner.cli import app as cli
from runner.errors import BadInputError, InfraError, Outcome, exit_code_for
from runner.units import parse_mem

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"
REPO = Path(__file__).resolve().parents[2]


def fx(name: str) -> str:
    return (FIX / name).read_text()


def cp(rc: int = 0, out: str = "", err: str = "") -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess([], rc, out, err)


# --------------------------------------------------------------------------- parsers on real output

def test_sbatch_parsable_real_output():
    assert parse_sbatch_parsable(fx("sbatch_parsable.stdout")) == ("15", None)
    assert parse_sbatch_parsable("4;ci\n") == ("4", "ci")


@pytest.mark.parametrize("junk", ["", "\n", "Submitted batch job 4\n", "abc"])
def test_sbatch_parsable_junk_is_infra(junk):
    with pytest.raises(InfraError):
        parse_sbatch_parsable(junk)


def test_scontrol_oom_job():
    [rec] = parse_scontrol_jobs(fx("scontrol_oom.txt"))
    assert rec["JobState"] == "OUT_OF_MEMORY" and rec["Reason"] == "OutOfMemory" and rec["ExitCode"] == "0:125"
    assert rec["MinMemoryNode"] == "100M" and rec["Power"] == ""
    [st] = states_from_scontrol([rec])
    assert (st.job_id, st.array_task_id, st.state) == ("1", None, "OUT_OF_MEMORY")


def test_scontrol_array_tasks_are_separate_records():
    states = states_from_scontrol(parse_scontrol_jobs(fx("scontrol_array_one_oom.txt")))
    by_task = {s.array_task_id: s for s in states}
    assert sorted(by_task) == [0, 1, 2]
    assert {s.array_job_id for s in states} == {"4"}
    assert (by_task[1].job_id, by_task[1].state, by_task[1].exit_code) == ("7", "OUT_OF_MEMORY", "0:125")
    assert by_task[2].job_id == "4" and by_task[2].state == "COMPLETED"    # the last task keeps the array's id
    assert by_task[0].state == "COMPLETED"


def test_scontrol_pending_array_meta_record_expands():
    states = states_from_scontrol(parse_scontrol_jobs(fx("scontrol_array_pending_dependency.txt")))
    assert [(s.array_task_id, s.state, s.reason, s.job_id) for s in states] == \
        [(k, "PENDING", "Dependency", None) for k in (0, 1, 2)]


def test_scontrol_dependency_never_satisfied_is_cancelled():
    states = states_from_scontrol(parse_scontrol_jobs(fx("scontrol_array_dependency_never_satisfied.txt")))
    assert {(s.state, s.reason) for s in states} == {("CANCELLED", "DependencyNeverSatisfied")}
    assert len(states) == 3


@pytest.mark.parametrize("name,state,exit_code", [
    ("scontrol_completed.txt", "COMPLETED", "0:0"),
    ("scontrol_failed.txt", "FAILED", "7:0"),
    ("scontrol_srun_oom_failed.txt", "FAILED", "1:0"),
    ("scontrol_running.txt", "RUNNING", "0:0"),
    ("scontrol_cancelled.txt", "CANCELLED", "0:15"),
    ("scontrol_timeout.txt", "TIMEOUT", "0:15"),
    ("scontrol_plan_failed.txt", "FAILED", "3:0"),
])
def test_scontrol_states(name, state, exit_code):
    [st] = states_from_scontrol(parse_scontrol_jobs(fx(name)))
    assert (st.state, st.exit_code) == (state, exit_code)


def test_scontrol_subset_array():
    states = states_from_scontrol(parse_scontrol_jobs(fx("scontrol_array_subset_completed.txt")))
    assert sorted(s.array_task_id for s in states) == [1, 3]


def test_scontrol_value_with_blanks():
    rec = parse_scontrol_line("JobId=5 JobState=PENDING Reason=(ReqNodeNotAvail, UnavailableNodes:n1) "
                              "Dependency=(null) Command=/a/b.sh")
    assert rec["Reason"] == "(ReqNodeNotAvail, UnavailableNodes:n1)"
    assert rec["Command"] == "/a/b.sh"


def test_squeue_real_output():
    rows = parse_squeue(fx("squeue_pending_dependency.txt"))
    assert rows[0]["array_task_id"] is None and rows[0]["state"] == "PENDING"
    states = states_from_squeue(rows)
    assert [(s.array_job_id, s.array_task_id, s.reason) for s in states[1:]] == \
        [("11", k, "Dependency") for k in (0, 1, 2)]
    [run] = states_from_squeue(parse_squeue(fx("squeue_running.txt")))
    assert (run.job_id, run.state) == ("9", "RUNNING")
    with pytest.raises(InfraError):
        parse_squeue("1|2|3\n")


def test_sacct_c_jobcomp_real_output():
    rows = parse_sacct(fx("sacct_c_jobcomp.txt"))
    states = {s.job_id: s for s in states_from_sacct(rows, "sacct -c")}
    assert set(states) == {"1", "2", "3", "4", "5", "6", "7"}
    assert states["1"].state == "OUT_OF_MEMORY" and states["1"].exit_code == "0:125"
    assert states["7"].state == "OUT_OF_MEMORY" and states["7"].array_task_id is None   # no array ids in jobcomp
    assert states["5"].state == "FAILED" and states["5"].derived_exit_code == "0:125"     # srun: OOM in a step
    more = {s.job_id: s.state for s in states_from_sacct(parse_sacct(fx("sacct_c_timeout_cancel_dep.txt")))}
    assert more == {"8": "TIMEOUT", "9": "CANCELLED", "10": "FAILED", "11": "CANCELLED", "12": "COMPLETED",
                    "13": "COMPLETED"}


def test_sacct_with_accounting_keeps_array_ids_and_step_states():
    # Written in the format of sacct -P with slurmdbd (not captured here: no slurmdbd on this machine).
    text = ("JobID|JobIDRaw|JobName|State|ExitCode|DerivedExitCode|Timelimit|MaxRSS\n"
            "4_0|6|nnrun-pp|COMPLETED|0:0|0:0|UNLIMITED|\n"
            "4_0.batch|6.batch|batch|COMPLETED|0:0||UNLIMITED|1000K\n"
            "4_1|7|nnrun-pp|FAILED|1:0|0:0|UNLIMITED|\n"
            "4_1.batch|7.batch|batch|FAILED|1:0||UNLIMITED|1000K\n"
            "4_1.0|7.0|python3|OUT_OF_MEMORY|0:125||UNLIMITED|99M\n"
            "4_[2-3]|4|nnrun-pp|PENDING|0:0|0:0|UNLIMITED|\n")
    states = states_from_sacct(parse_sacct(text))
    by_task = {s.array_task_id: s for s in states}
    assert sorted(by_task) == [0, 1, 2, 3]
    assert by_task[1].job_id == "7" and by_task[1].step_states == ["FAILED", "OUT_OF_MEMORY"]
    v = TaskView(role="shard", shard=1, slurm_state="FAILED", step_states=by_task[1].step_states)
    classify(v)
    assert v.outcome is Outcome.OOM          # the srun trap: only the step shows the OOM


@pytest.mark.parametrize("text,expected", [
    ("0-2", [0, 1, 2]), ("1,3", [1, 3]), ("[0-3]", [0, 1, 2, 3]), ("0-8:4", [0, 4, 8]),
    ("0-15%4", list(range(16))), ("5", [5]), ("0-1,7", [0, 1, 7]),
])
def test_expand_array_range(text, expected):
    assert expand_array_range(text) == expected


def test_expand_array_range_garbage():
    with pytest.raises(InfraError):
        expand_array_range("a-b")


# --------------------------------------------------------------------------- scripts

def opts(tmp_path, **kw) -> SubmitOptions:
    base = dict(dataset="501", dataset_name="Dataset501_Demo", mem="16g", shards=4,
                submission_dir=str(tmp_path / "sub"), python="/opt/py/bin/python3", pythonpath=str(REPO),
                raw="/data/raw", preprocessed="/data/pre", host_python="/opt/hostenv/bin/python")
    base.update(kw)
    return SubmitOptions(**base)


def sbatch_opts(script: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in script.splitlines():
        m = re.match(r"#SBATCH --([a-z-]+)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def code_lines(script: str) -> list[str]:
    return [ln for ln in script.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@pytest.mark.parametrize("n,expected", [(16 * 1024 ** 3, "16G"), (parse_mem("1200m"), "1200M"),
                                         (parse_mem("2.5g"), "2560M"), (parse_mem("100m"), "100M"),
                                         (100 * 1024 ** 2 + 1, "101M")])
def test_slurm_mem(n, expected):
    assert slurm_mem(n) == expected


@pytest.mark.parametrize("shards,expected", [([0, 1, 2, 3], "0-3"), ([1, 3], "1,3"), ([2], "2"), ([3, 1], "1,3"),
                                             ([2, 3, 4], "2-4")])
def test_array_spec(shards, expected):
    assert array_spec(shards) == expected


def test_task_script_has_dependency_array_mem_and_no_srun(tmp_path):
    o = opts(tmp_path, partition="gpu", time="2:00:00", cpus_per_task=4, np=["2"], configurations=["3d_fullres"])
    script = render_task_script(o, "123")
    sb = sbatch_opts(script)
    assert sb["dependency"] == ["afterok:123"]
    assert sb["kill-on-invalid-dep"] == ["yes"]
    assert sb["array"] == ["0-3"]
    assert sb["mem"] == ["16G"]
    assert sb["partition"] == ["gpu"] and sb["time"] == ["2:00:00"] and sb["cpus-per-task"] == ["4"]
    assert sb["output"] == [f"{o.submission_dir}/logs/preprocess-%A_%a.out"]
    assert not any(re.search(r"\bsrun\b", ln) for ln in code_lines(script))
    [cmd] = [ln for ln in code_lines(script) if "runner.cli" in ln]
    assert cmd.startswith('"$PYTHON" -m runner.cli preprocess -d 501 --mem 16g --runtime host --json')
    assert '--shard "$K/$N"' in cmd and "--host-python /opt/hostenv/bin/python" in cmd
    assert "-c 3d_fullres" in cmd and "-np 2" in cmd and "--no_pp" not in cmd
    assert cmd.endswith('>"$SUBMISSION/tasks/$K.json.tmp"')
    assert "N=4" in code_lines(script)
    assert script.startswith("#!/bin/bash\n")


def test_plan_script_is_no_pp_without_array(tmp_path):
    o = opts(tmp_path, npfp="2")
    script = render_plan_script(o)
    sb = sbatch_opts(script)
    assert "array" not in sb and "dependency" not in sb
    assert sb["mem"] == ["16G"] and sb["output"] == [f"{o.submission_dir}/logs/plan-%j.out"]
    [cmd] = [ln for ln in code_lines(script) if "runner.cli" in ln]
    assert "--no_pp" in cmd and "--shard" not in cmd and "-npfp 2" in cmd
    assert not any(re.search(r"\bsrun\b", ln) for ln in code_lines(script))


def test_resubmission_script_has_the_listed_shards_and_no_dependency(tmp_path):
    script = render_task_script(opts(tmp_path, only_shards=[1, 3]), None)
    sb = sbatch_opts(script)
    assert sb["array"] == ["1,3"] and "dependency" not in sb


def test_scripts_are_valid_bash(tmp_path):
    o = opts(tmp_path, raw="/data/it's raw")      # a quote in a path stays one word
    for script in (render_plan_script(o), render_task_script(o, "7")):
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)
        assert "'/data/it'\"'\"'s raw'" in script


def test_blank_in_submission_folder_is_bad_input(tmp_path):
    with pytest.raises(BadInputError):
        render_task_script(opts(tmp_path, submission_dir="/data/my dir/sub"), "1")


def test_percent_in_folder_is_escaped_for_output(tmp_path):
    sb = sbatch_opts(render_plan_script(opts(tmp_path, submission_dir="/data/100%/sub")))
    assert sb["output"] == ["/data/100%%/sub/logs/plan-%j.out"]


def write_fake_python(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_task_script_runs_and_keeps_nnrun_exit_code_and_json(tmp_path):
    """The rendered script itself, run by bash as Slurm would (environment of an array task)."""
    fake = write_fake_python(tmp_path / "py", "import json, sys\n"
                             "print('progress', file=sys.stderr)\n"
                             "print(json.dumps({'outcome': 'oom', 'exit_code': 3, 'argv': sys.argv[1:]}))\n"
                             "sys.exit(3)\n")
    o = opts(tmp_path, python=fake)
    script = tmp_path / "preprocess.sbatch"
    script.write_text(render_task_script(o, "7"))
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "2", "SLURM_JOB_ID": "12", "SLURM_ARRAY_JOB_ID": "9"}
    p = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert p.returncode == 3 and "progress" in p.stderr
    files = read_task_files(o.submission_dir, "2")
    assert files["exit"] == 3
    assert files["start"]["job_id"] == "12" and files["start"]["array_job_id"] == "9"
    assert files["nnrun"]["outcome"] == "oom"
    assert files["nnrun"]["argv"][files["nnrun"]["argv"].index("--shard") + 1] == "2/4"
    assert not (Path(o.submission_dir) / "tasks" / "2.json.tmp").exists()


# --------------------------------------------------------------------------- diagnosis on real submissions

class Replay:
    """Answers scontrol/sacct/squeue with captured outputs; records the commands."""

    def __init__(self, scontrol: dict[str, str] | None = None, sacct_c: str | None = None,
                 squeue: str = "", accounting: str | None = None):
        self.scontrol = scontrol or {}
        self.sacct_c = sacct_c
        self.squeue_out = squeue
        self.accounting = accounting
        self.calls: list[list[str]] = []

    def __call__(self, argv):
        argv = list(argv)
        self.calls.append(argv)
        if argv[:3] == ["scontrol", "show", "job"]:
            text = self.scontrol.get(argv[-1])
            if text is None:
                return cp(1, "", fx("scontrol_invalid_job.stderr"))
            return cp(0, text)
        if argv[0] == "sacct" and "-c" not in argv:
            if self.accounting is None:
                return cp(1, fx("sacct_disabled.stdout"), fx("sacct_disabled.stderr"))
            return cp(0, self.accounting)
        if argv[0] == "sacct":
            return cp(0, self.sacct_c or "", "sacct: error: Unknown type ArrayJobId: 17\n")
        if argv[0] == "squeue":
            return cp(0, self.squeue_out)
        raise AssertionError(f"unexpected command {argv}")


def fixture_submission(tmp_path, name: str) -> dict:
    dest = tmp_path / name
    shutil.copytree(FIX / name, dest)
    return load_submission(dest)


def shard1_oom_replay(scontrol=True) -> Replay:
    d = FIX / "submission_shard1_oom"
    known = {"16": (d / "scontrol_plan.txt").read_text(), "17": (d / "scontrol_array.txt").read_text()}
    return Replay(scontrol=known if scontrol else {}, sacct_c=(d / "sacct_c.txt").read_text())


def check_shard1_oom(d: SlurmDiagnosis):
    assert d.finished and d.outcome is Outcome.OOM and d.exit_code == 3 == exit_code_for(Outcome.OOM)
    assert d.oom_shards == [1] and d.failed_shards == [1]
    t = {v.shard: v for v in d.tasks}
    assert [t[k].slurm_state for k in (0, 1, 2)] == ["COMPLETED", "OUT_OF_MEMORY", "COMPLETED"]
    assert [t[k].outcome for k in (0, 1, 2)] == [Outcome.OK, Outcome.OOM, Outcome.OK]
    assert t[1].job_id == "19" and t[1].slurm_id == "17_1"
    assert t[1].victim_case == "case_1" and t[1].peak_anon_bytes == 100913152
    assert d.plan.slurm_state == "COMPLETED" and d.plan.outcome is Outcome.OK
    argv = d.recommendation_argv
    assert argv[:3] == ["nnrun", "slurm", "submit"]
    assert argv[argv.index("--mem") + 1] == "192m"            # 100m x 1.5, rounded up to 64 MiB steps
    assert argv[argv.index("--only-shards") + 1] == "1"
    assert argv[argv.index("--shards") + 1] == "3"
    assert "shard 1 (task 17_1) on case case_1" in d.message


def test_diagnosis_of_a_real_array_with_one_oom_task_from_scontrol(tmp_path):
    rec = fixture_submission(tmp_path, "submission_shard1_oom")
    replay = shard1_oom_replay()
    d = status(rec, SlurmClient(replay))
    check_shard1_oom(d)
    assert d.sources == ["scontrol"]
    assert not any(c[0] == "sacct" for c in replay.calls)


def test_diagnosis_after_scontrol_forgot_reads_sacct_c_with_the_task_job_ids(tmp_path):
    rec = fixture_submission(tmp_path, "submission_shard1_oom")
    replay = shard1_oom_replay(scontrol=False)
    d = status(rec, SlurmClient(replay))
    check_shard1_oom(d)
    assert d.sources == ["sacct -c"]
    [sacct_c] = [c for c in replay.calls if c[:2] == ["sacct", "-c"]]
    assert set(sacct_c[sacct_c.index("-j") + 1].split(",")) == {"16", "17", "18", "19"}


def test_status_json_and_human_rendering(tmp_path):
    rec = fixture_submission(tmp_path, "submission_shard1_oom")
    d = status(rec, SlurmClient(shard1_oom_replay()))
    data = json.loads(json.dumps(d.to_json()))
    assert data["outcome"] == "oom" and data["exit_code"] == 3 and data["oom_shards"] == [1]
    assert data["tasks"][1]["slurm_state"] == "OUT_OF_MEMORY" and data["tasks"][1]["victim_case"] == "case_1"
    assert data["recommendation"].startswith("nnrun slurm submit -d 501 --mem 192m --shards 3 --only-shards 1")
    text = render_status(d)
    assert text.splitlines()[0].startswith("nnrun slurm: oom (out of memory):")
    assert "OUT_OF_MEMORY" in text and "next:         nnrun slurm submit" in text


def test_diagnosis_of_the_real_resubmission(tmp_path):
    rec = fixture_submission(tmp_path, "submission_resubmit_ok")
    d = status(rec, SlurmClient(Replay(
        scontrol={"20": (FIX / "submission_resubmit_ok" / "scontrol_array.txt").read_text()})))
    assert d.outcome is Outcome.OK and d.exit_code == 0 and d.finished
    assert [v.shard for v in d.tasks] == [1] and d.plan is None
    assert d.dataset_complete is True and d.recommendation_argv is None
    assert "dataset is complete" in d.message


@pytest.mark.parametrize("scontrol", [True, False])
def test_diagnosis_of_a_real_plan_oom(tmp_path, scontrol):
    rec = fixture_submission(tmp_path, "submission_plan_oom")
    d = FIX / "submission_plan_oom"
    known = {"21": (d / "scontrol_plan.txt").read_text(), "22": (d / "scontrol_array.txt").read_text()}
    diag = status(rec, SlurmClient(Replay(scontrol=known if scontrol else {},
                                          sacct_c=(d / "sacct_c.txt").read_text())))
    assert diag.finished and diag.outcome is Outcome.OOM and diag.exit_code == 3
    assert diag.plan.slurm_state == "OUT_OF_MEMORY" and "own process" in diag.plan.note
    assert [v.slurm_state for v in diag.tasks] == ["CANCELLED", "CANCELLED"]
    assert [v.outcome for v in diag.tasks] == [None, None]
    argv = diag.recommendation_argv
    assert "--only-shards" not in argv                       # the whole dataset again, plan job included
    assert argv[argv.index("--mem") + 1] == "192m"
    assert argv[argv.index("--time") + 1] == "5" and argv[argv.index("--cpus-per-task") + 1] == "1"
    assert "plan job 21" in diag.message


@pytest.mark.parametrize("scontrol", [True, False])
def test_real_nnunet_plan_job_recovered_by_retry_but_slurm_cancelled_the_array(tmp_path, scontrol):
    """Real nnU-Net (--runtime host, demo dataset, --mem 3g): nnrun's fingerprint workers were OOM-killed, it
    retried with -npfp 4 and wrote the plans, but Slurm ended the job OUT_OF_MEMORY and afterok cancelled the array."""
    rec = fixture_submission(tmp_path, "submission_demo_plan_recovered")
    d = FIX / "submission_demo_plan_recovered"
    known = {"31": (d / "scontrol_plan.txt").read_text(), "32": (d / "scontrol_array.txt").read_text()}
    diag = status(rec, SlurmClient(Replay(scontrol=known if scontrol else {},
                                          sacct_c=(d / "sacct_c.txt").read_text())))
    assert diag.finished and diag.outcome is Outcome.OOM and diag.exit_code == 3
    assert diag.plan.outcome is Outcome.OK and diag.plan.slurm_state == "OUT_OF_MEMORY"
    assert diag.plan.retried_after_oom[0]["victim_case"] == "case005"
    assert "on case case005" in diag.plan.note
    assert [(v.slurm_state, v.outcome) for v in diag.tasks] == [("CANCELLED", None)] * 3
    argv = diag.recommendation_argv
    assert argv[argv.index("--only-shards") + 1] == "0,1,2" and argv[argv.index("--mem") + 1] == "3g"
    assert "-c" in argv and "3d_fullres" in argv and "--host-python" in argv
    assert "afterok cancelled the 3 shard task(s)" in diag.message


@pytest.mark.parametrize("scontrol", [True, False])
def test_real_nnunet_array_oom_killed_recommends_fewer_workers(tmp_path, scontrol):
    """Real nnU-Net (--runtime host, demo dataset, --mem 1g -np 4 --retry 0): every shard OOM-killed by Slurm;
    nnrun's own recommendation (-np 2 under the same memory) becomes the resubmit command."""
    rec = fixture_submission(tmp_path, "submission_demo_all_oom")
    d = FIX / "submission_demo_all_oom"
    diag = status(rec, SlurmClient(Replay(
        scontrol={"36": (d / "scontrol_array.txt").read_text()} if scontrol else {},
        sacct_c=(d / "sacct_c.txt").read_text())))
    assert diag.outcome is Outcome.OOM and diag.exit_code == 3 and diag.oom_shards == [0, 1, 2]
    assert [v.slurm_state for v in diag.tasks] == ["OUT_OF_MEMORY"] * 3
    assert diag.tasks[1].cases_in_flight == ["case003"]
    argv = diag.recommendation_argv
    assert argv[argv.index("--mem") + 1] == "1g" and argv[argv.index("-np") + 1] == "2"
    assert argv[argv.index("--retry") + 1] == "0" and argv[argv.index("--only-shards") + 1] == "0,1,2"
    assert any("cases in flight: case003" in a for a in diag.advice)


# --------------------------------------------------------------------------- diagnosis rules

def record(tmp_path, **kw) -> dict:
    o = opts(tmp_path, mem=kw.pop("mem", "1200m"), shards=kw.pop("shards", 3), **kw)
    Path(o.submission_dir, "tasks").mkdir(parents=True)
    rec = submission_record(o, "x", "10", "11")
    rec["_dir"] = o.submission_dir
    return rec


def task_files(rec, shard, report=None, exit_code=None, job_id=None):
    t = Path(rec["_dir"]) / "tasks"
    if job_id:
        (t / f"{shard}.start").write_text(f"job_id={job_id}\narray_job_id=11\narray_task_id={shard}\n")
    if report is not None:
        (t / f"{shard}.json").write_text(json.dumps(report) + "\n")
    if exit_code is not None:
        (t / f"{shard}.exit").write_text(f"{exit_code}\n")


def st(task, state, exit_code="0:0", reason="None", time_limit="UNLIMITED", job_id=None):
    return JobState(job_id=job_id or str(100 + task), array_job_id="11", array_task_id=task, state=state,
                    reason=reason, exit_code=exit_code, time_limit=time_limit)


PLAN_OK = JobState(job_id="10", array_job_id=None, array_task_id=None, state="COMPLETED", exit_code="0:0")


def diag(rec, states):
    plan, tasks = build_views(rec, [PLAN_OK, *states])
    return diagnose(rec, plan, tasks)


def test_fewer_workers_when_nnrun_recommends_them(tmp_path):
    rec = record(tmp_path, np=["4"])
    task_files(rec, 1, {"outcome": "oom", "exit_code": 3, "victim_case": "case003",
                        "recommendation_argv": ["nnrun", "preprocess", "-d", "501", "--mem", "1200m",
                                                "-c", "3d_fullres", "-np", "2", "-npfp", "1"]}, 3)
    d = diag(rec, [st(0, "COMPLETED"), st(1, "OUT_OF_MEMORY", "0:125"), st(2, "COMPLETED")])
    argv = d.recommendation_argv
    assert argv[argv.index("--mem") + 1] == "1200m"
    assert argv[argv.index("-np") + 1] == "2" and argv[argv.index("-npfp") + 1] == "1"
    assert any("fewer workers" in a for a in d.advice)


def test_more_memory_from_nnrun_recommendation_the_largest_of_several(tmp_path):
    rec = record(tmp_path)
    for k, mem in ((0, "2g"), (2, "1800m")):
        task_files(rec, k, {"outcome": "oom", "exit_code": 3,
                            "recommendation_argv": ["nnrun", "preprocess", "-d", "501", "--mem", mem]}, 3)
    d = diag(rec, [st(0, "OUT_OF_MEMORY", "0:125"), st(1, "COMPLETED"), st(2, "OUT_OF_MEMORY", "0:125")])
    argv = d.recommendation_argv
    assert argv[argv.index("--mem") + 1] == "2048m"
    assert argv[argv.index("--only-shards") + 1] == "0,2"
    assert d.oom_shards == [0, 2]


def test_oom_without_nnrun_report_is_one_and_a_half_times(tmp_path):
    rec = record(tmp_path, mem="16g")
    d = diag(rec, [st(0, "COMPLETED"), st(1, "COMPLETED"), st(2, "OUT_OF_MEMORY", "0:125")])
    argv = d.recommendation_argv
    assert argv[argv.index("--mem") + 1] == "24g"
    assert d.tasks[2].outcome is Outcome.OOM


def test_timeout_is_killed_and_doubles_the_time_limit(tmp_path):
    rec = record(tmp_path)
    d = diag(rec, [st(0, "COMPLETED"), st(1, "TIMEOUT", "0:15", "TimeLimit", "00:01:00"), st(2, "COMPLETED")])
    assert d.outcome is Outcome.KILLED and d.exit_code == 5
    argv = d.recommendation_argv
    assert argv[argv.index("--time") + 1] == "00:02:00" and argv[argv.index("--mem") + 1] == "1200m"


def test_worst_outcome_decides_the_exit_code(tmp_path):
    rec = record(tmp_path)
    task_files(rec, 2, {"outcome": "error", "exit_code": 4, "message": "shape mismatch in case007"}, 4)
    d = diag(rec, [st(0, "COMPLETED"), st(1, "OUT_OF_MEMORY", "0:125"), st(2, "FAILED", "4:0", "NonZeroExitCode")])
    assert d.outcome is Outcome.ERROR and d.exit_code == exit_code_for(Outcome.ERROR)
    assert d.failed_shards == [1, 2] and d.oom_shards == [1]
    assert any("shape mismatch" in a for a in d.advice)


def test_running_submission_is_not_finished_and_exits_0(tmp_path):
    rec = record(tmp_path)
    d = diag(rec, [st(0, "COMPLETED"), st(1, "RUNNING"), st(2, "PENDING", reason="Resources", job_id="11")])
    assert not d.finished and d.outcome is Outcome.OK and d.exit_code == 0
    assert d.recommendation_argv is None and "still in the queue: 2 (1 pending)" in d.message
    assert render_status(d).startswith("nnrun slurm: running:")


def test_nnrun_ok_after_a_retry_wins_over_slurm_oom_state(tmp_path):
    rec = record(tmp_path)
    task_files(rec, 0, {"outcome": "ok", "exit_code": 0, "attempts": [
        {"outcome": "oom", "phase": "preprocessing", "victim_case": "case007", "workers": {"np": {"3d_fullres": 4}}},
        {"outcome": "ok", "phase": None, "victim_case": None}]}, 0)
    d = diag(rec, [st(0, "OUT_OF_MEMORY", "0:125"), st(1, "COMPLETED"), st(2, "COMPLETED")])
    assert d.outcome is Outcome.OK and d.exit_code == 0 and d.recommendation_argv is None
    assert d.tasks[0].note == ("Slurm counted an OOM kill in preprocessing on case case007; "
                               "nnrun retried with fewer workers and finished")


def test_slurm_oom_upgrades_an_nnrun_error(tmp_path):
    rec = record(tmp_path)
    task_files(rec, 0, {"outcome": "error", "exit_code": 4}, 4)
    d = diag(rec, [st(0, "OUT_OF_MEMORY", "0:125"), st(1, "COMPLETED"), st(2, "COMPLETED")])
    assert d.tasks[0].outcome is Outcome.OOM


def test_srun_style_failed_with_derived_125_is_oom():
    v = TaskView(role="shard", shard=0, slurm_state="FAILED", slurm_exit_code="1:0",
                 slurm_derived_exit_code="0:125")
    classify(v)
    assert v.outcome is Outcome.OOM


def test_failed_without_report_exit_127_is_infra(tmp_path):
    rec = record(tmp_path)
    task_files(rec, 0, exit_code=127)
    d = diag(rec, [st(0, "FAILED", "127:0", "NonZeroExitCode"), st(1, "COMPLETED"), st(2, "COMPLETED")])
    assert d.tasks[0].outcome is Outcome.INFRA and d.exit_code == 6


def test_cancelled_while_pending_is_killed(tmp_path):
    rec = record(tmp_path)
    meta = JobState(job_id=None, array_job_id="11", array_task_id=2, state="CANCELLED", reason="None")
    d = diag(rec, [st(0, "COMPLETED"), st(1, "COMPLETED"), meta])
    assert d.tasks[2].outcome is Outcome.KILLED and d.failed_shards == [2]


def test_sacct_c_meta_record_stands_for_tasks_that_never_started(tmp_path):
    rec = record(tmp_path)
    for k in (0, 1):
        task_files(rec, k, {"outcome": "ok", "exit_code": 0}, 0, job_id=str(200 + k))
    states = states_from_sacct(parse_sacct(
        "JobID|JobName|State|ExitCode|DerivedExitCode|Timelimit|Start|End\n"
        "200|pp|COMPLETED|0:0|0:0|UNLIMITED|x|y\n201|pp|COMPLETED|0:0|0:0|UNLIMITED|x|y\n"
        "11|pp|CANCELLED|0:0|0:0|UNLIMITED|x|y\n"), "sacct -c")
    d = diag(rec, states)
    assert [v.slurm_state for v in d.tasks] == ["COMPLETED", "COMPLETED", "CANCELLED"]
    assert d.failed_shards == [2]


def test_plan_recovered_by_retry_but_slurm_oom_cancels_the_array(tmp_path):
    rec = record(tmp_path)
    task_files(rec, "plan", {"outcome": "ok", "exit_code": 0}, 0)
    plan = JobState(job_id="10", array_job_id=None, array_task_id=None, state="OUT_OF_MEMORY",
                    exit_code="0:125")
    metas = [JobState(job_id=None, array_job_id="11", array_task_id=k, state="CANCELLED",
                      reason="DependencyNeverSatisfied") for k in range(3)]
    p, tasks = build_views(rec, [plan, *metas])
    d = diagnose(rec, p, tasks)
    argv = d.recommendation_argv
    assert argv[argv.index("--only-shards") + 1] == "0,1,2"
    assert d.outcome is Outcome.OOM and "afterok cancelled" in d.message
    assert any("plans exist" in a for a in d.advice)


@pytest.mark.parametrize("text,minutes", [("5", 5), ("00:01:00", 1), ("1:30", 2), ("2:00:00", 120),
                                          ("1-00:00:00", 1440), ("1-2", 1560), ("UNLIMITED", None)])
def test_time_to_minutes(text, minutes):
    assert diagnosis._time_to_minutes(text) == minutes


def test_task_json_parsing():
    assert parse_task_json('noise\n{"outcome": "oom", "exit_code": 3}\n')[0]["outcome"] == "oom"
    assert parse_task_json("")[0] is None
    assert parse_task_json('{"outcome": "weird"}')[1].startswith("unknown outcome")


# --------------------------------------------------------------------------- index and job arguments

def test_index_roundtrip(tmp_path):
    env = {INDEX_ENV: str(tmp_path / "idx")}
    index_add("17", "/data/sub", environ=env)
    assert index_lookup("17", environ=env) == "/data/sub"
    assert index_lookup("18", environ=env) is None
    assert index_dir({"HOME": "/home/u"}) == Path("/home/u/.cache/nnrun/slurm-jobs")


def test_scripts_of_an_installed_nnrun_run_its_executable(tmp_path):
    o = opts(tmp_path, nnrun="/opt/venv/bin/nnrun", np=["2"], configurations=["3d_fullres"])
    for script in (render_plan_script(o), render_task_script(o, "7")):
        lines = code_lines(script)
        assert "NNRUN=/opt/venv/bin/nnrun" in lines
        [cmd] = [ln for ln in lines if ln.startswith('"$NNRUN"')]
        assert cmd.startswith('"$NNRUN" preprocess -d 501 --mem 16g --runtime host --json')
        assert "runner.cli" not in script and "PYTHONPATH" not in script and "$PYTHON" not in script
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_scripts_of_a_checkout_run_its_package_with_pythonpath(tmp_path):
    o = opts(tmp_path)                                  # nnrun=None: a checkout that is not installed
    for script in (render_plan_script(o), render_task_script(o, "7")):
        lines = code_lines(script)
        assert "PYTHON=/opt/py/bin/python3" in lines
        assert f'export PYTHONPATH={REPO}"${{PYTHONPATH:+:$PYTHONPATH}}"' in lines
        assert any(ln.startswith('"$PYTHON" -m runner.cli preprocess ') for ln in lines)
        assert "NNRUN=" not in script


@pytest.mark.parametrize("text,expected", [("17", ("17", None, None)), ("17_1", ("17", 1, None)),
                                           ("17;ci", ("17", None, "ci")), ("abc", None), ("17_", None)])
def test_parse_job_arg(text, expected):
    assert parse_job_arg(text) == expected


# --------------------------------------------------------------------------- the CLI

def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def slurm_env(tmp_path, monkeypatch, tiny_raw):
    """A tiny raw dataset, an index of our own, and a PATH with only what a test puts in bin/."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv(INDEX_ENV, str(tmp_path / "index"))
    monkeypatch.setenv(PYTHON_ENV, "/opt/py/bin/python3")   # no nnunetv2 check against this Python
    monkeypatch.delenv("NNRUN_HOST_PYTHON", raising=False)
    return {"raw": tiny_raw, "pre": tmp_path / "pre", "bin": bin_dir}


def submit_args(env, *extra):
    return ["slurm", "submit", "-d", "501", "--mem", "1g", "--shards", "3", "--raw", str(env["raw"]),
            "--preprocessed", str(env["pre"]), *extra]


def test_submit_without_sbatch_is_one_line_infra(slurm_env, capsys):
    code, out, err = run(submit_args(slurm_env), capsys)
    assert code == 6 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("nnrun slurm: infra: sbatch not found")


def test_submit_without_sbatch_json(slurm_env, capsys):
    code, out, err = run(submit_args(slurm_env, "--json"), capsys)
    assert code == 6 and json.loads(out) == {"outcome": "infra", "exit_code": 6, "message": json.loads(out)["message"]}
    assert not (slurm_env["pre"] / "Dataset501_Tiny" / ".nnrun" / "slurm").exists()


def test_dry_run_prints_both_scripts_and_writes_nothing(slurm_env, capsys):
    code, out, err = run(submit_args(slurm_env, "--dry-run", "--partition", "debug"), capsys)
    assert code == 0
    assert out.count("#!/bin/bash") == 2 and "--no_pp" in out and "--array=0-2" in out
    assert "#SBATCH --dependency=afterok:<plan job id>" in out and "#SBATCH --partition=debug" in out
    assert not slurm_env["pre"].exists()


def test_submit_refuses_a_configuration_nnunet_would_skip(slurm_env, capsys):
    code, out, err = run(submit_args(slurm_env, "--dry-run", "-c", "nonsense"), capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert "bad_input: unknown configuration 'nonsense'" in err and "3d_fullres" in err
    assert not slurm_env["pre"].exists()


@pytest.mark.parametrize("installed", ["/opt/venv/bin/nnrun", None])
def test_dry_run_scripts_follow_how_nnrun_is_installed(installed, slurm_env, capsys, monkeypatch):
    monkeypatch.delenv(PYTHON_ENV)
    monkeypatch.setattr("runner.cli.slurm._nnrun_executable", lambda: installed)
    monkeypatch.setattr("runner.cli.slurm._repo_root", lambda: str(REPO))
    code, out, err = run(submit_args(slurm_env, "--dry-run", "--host-python", sys.executable), capsys)
    assert code == 0, err
    if installed:
        assert f"NNRUN={installed}" in out and out.count('"$NNRUN" preprocess -d 501') == 2
        assert "runner.cli" not in out and "PYTHONPATH" not in out
    else:
        assert f"PYTHON={sys.executable}" in out and out.count('"$PYTHON" -m runner.cli preprocess') == 2
        assert f"export PYTHONPATH={REPO}" in out


def test_slurm_python_env_keeps_the_python_form(slurm_env, capsys, monkeypatch):
    monkeypatch.setattr("runner.cli.slurm._nnrun_executable", lambda: "/opt/venv/bin/nnrun")
    code, out, _ = run(submit_args(slurm_env, "--dry-run"), capsys)         # slurm_env sets NNRUN_SLURM_PYTHON
    assert code == 0 and "PYTHON=/opt/py/bin/python3" in out and "NNRUN=" not in out


def test_dry_run_without_a_python_with_nnunet_warns_and_prints_the_scripts(slurm_env, capsys, monkeypatch):
    monkeypatch.delenv(PYTHON_ENV)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    code, out, err = run(submit_args(slurm_env, "--dry-run"), capsys)
    assert code == 0
    assert out.count("#!/bin/bash") == 2
    assert "warning" in err and "--host-python" in err and "nnunetv2" in err
    code, out, err = run(submit_args(slurm_env, "--dry-run", "--host-python", "/nowhere/python", "--json"), capsys)
    assert code == 0 and json.loads(out)["dry_run"] is True
    assert "warning" in err and "/nowhere/python does not exist" in err


def _fake_bin(tmp_path, name):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("direct_url,expected", [
    ({"dir_info": {"editable": True}, "url": f"file://{REPO}"}, True),
    ({"dir_info": {"editable": True}, "url": "file:///another/checkout"}, False),    # another worktree's nnrun
    ({"dir_info": {}, "url": f"file://{REPO}"}, False),                                # a copy, not this code
    (None, False),
])
def test_installed_in_editable_mode(direct_url, expected, monkeypatch):
    from importlib import metadata

    from runner.cli import slurm as cli_slurm

    class Dist:
        def read_text(self, name):
            return json.dumps(direct_url) if direct_url is not None else None

    monkeypatch.setattr(metadata, "distribution", lambda name: Dist())
    assert cli_slurm._installed_in_editable_mode(str(REPO)) is expected


def test_nnrun_executable_detection(tmp_path, monkeypatch):
    from runner.cli import slurm as cli_slurm
    python = tmp_path / "venv" / "bin" / "python"
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    # Installed in site-packages: the nnrun beside the Python, else the one on PATH, else none.
    monkeypatch.setattr(cli_slurm, "_repo_root", lambda: None)
    assert cli_slurm._nnrun_executable() is None
    on_path = _fake_bin(tmp_path, "path/nnrun")
    assert cli_slurm._nnrun_executable() == str(on_path)
    beside = _fake_bin(tmp_path, "venv/bin/nnrun")
    assert cli_slurm._nnrun_executable() == str(beside)
    # A checkout: the python -m form, unless this Python has the checkout installed in editable mode.
    monkeypatch.setattr(cli_slurm, "_repo_root", lambda: str(REPO))
    monkeypatch.setattr(cli_slurm, "_installed_in_editable_mode", lambda root: False)
    assert cli_slurm._nnrun_executable() is None
    monkeypatch.setattr(cli_slurm, "_installed_in_editable_mode", lambda root: root == str(REPO))
    assert cli_slurm._nnrun_executable() == str(beside)


def test_dry_run_json_only_shards_has_no_plan(slurm_env, capsys):
    plans = slurm_env["pre"] / "Dataset501_Tiny"
    plans.mkdir(parents=True)
    (plans / "nnUNetPlans.json").write_text("{}")
    code, out, _ = run(submit_args(slurm_env, "--dry-run", "--json", "--only-shards", "0,2"), capsys)
    data = json.loads(out)
    assert code == 0 and data["scripts"]["plan"] is None
    assert "#SBATCH --array=0,2" in data["scripts"]["preprocess"] and "dependency" not in data["scripts"]["preprocess"]


@pytest.mark.parametrize("extra,words", [
    (["--only-shards", "5"], "--only-shards"),
    (["--only-shards", "1"], "needs the plans"),
    (["--runtime", "docker"], "--runtime"),
    (["--host-python", "/nonexistent/python"], "does not exist"),
])
def test_submit_bad_input(slurm_env, capsys, extra, words):
    code, out, err = run(submit_args(slurm_env, *extra), capsys)
    assert code == 2 and words in err and err.count("\n") == 1


def test_submit_bad_mem_and_two_datasets(slurm_env, capsys):
    args = submit_args(slurm_env)
    args[args.index("--mem") + 1] = "abc"
    assert run(args, capsys)[0] == 2
    args = submit_args(slurm_env)
    args[args.index("-d") + 1: args.index("-d") + 2] = ["501", "502"]
    code, _, err = run(args, capsys)
    assert code == 2 and "one dataset" in err


def test_submit_refuses_a_shard_map_of_another_count(slurm_env, capsys):
    d = slurm_env["pre"] / "Dataset501_Tiny" / ".nnrun"
    d.mkdir(parents=True)
    (d / "shards.nnUNetPlans.json").write_text(json.dumps({"schema_version": 1, "shards": 2, "assignment": {}}))
    code, _, err = run(submit_args(slurm_env), capsys)
    assert code == 2 and "--shards 2" in err


def test_host_runtime_needs_a_python_with_nnunet(slurm_env, capsys, monkeypatch):
    monkeypatch.delenv(PYTHON_ENV)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    code, _, err = run(submit_args(slurm_env), capsys)
    assert code == 2 and "--host-python" in err


def fake_command(bin_dir: Path, name: str, script: str) -> None:
    p = bin_dir / name
    p.write_text("#!/bin/bash\n" + script)
    p.chmod(0o755)


def test_submit_with_a_stand_in_sbatch_writes_the_submission(slurm_env, capsys):
    log = slurm_env["bin"] / "sbatch.log"
    fake_command(slurm_env["bin"], "sbatch",
                 f'echo "$@" >> {log}\nn=$(( $(/usr/bin/wc -l < {log}) + 40 ))\necho $n\n')
    code, out, err = run(submit_args(slurm_env, "--json"), capsys)
    assert code == 0, err
    data = json.loads(out)
    assert (data["plan_job_id"], data["array_job_id"], data["array"]) == ("41", "42", "0-2")
    sub = Path(data["submission_dir"])
    assert sub.parent == slurm_env["pre"] / "Dataset501_Tiny" / ".nnrun" / "slurm"
    assert "#SBATCH --dependency=afterok:41" in (sub / "preprocess.sbatch").read_text()
    rec = json.loads((sub / "submission.json").read_text())
    assert rec["plan_job_id"] == "41" and rec["options"]["shards"] == 3 and rec["options"]["mem"] == "1g"
    assert index_lookup("42") == str(sub) and index_lookup("41") == str(sub)
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["--parsable", "--parsable"]


def test_submit_prints_what_it_submitted_on_stdout(slurm_env, capsys):
    log = slurm_env["bin"] / "sbatch.log"
    fake_command(slurm_env["bin"], "sbatch",
                 f'echo "$@" >> {log}\nn=$(( $(/usr/bin/wc -l < {log}) + 40 ))\necho $n\n')
    code, out, err = run(submit_args(slurm_env), capsys)
    assert code == 0, err
    assert out.startswith("nnrun slurm: submitted plan job 41 and array job 42") and "nnrun slurm status 42" in out
    assert err == ""


def test_submit_cancels_the_plan_when_the_array_is_refused(slurm_env, capsys):
    log = slurm_env["bin"] / "calls.log"
    fake_command(slurm_env["bin"], "sbatch",
                 f'case "$*" in *plan.sbatch) echo 41;; *) echo "{fx("sbatch_mem_too_large.stderr").strip()}" >&2; '
                 f'exit 1;; esac\n')
    fake_command(slurm_env["bin"], "scancel", f'echo "scancel $*" >> {log}\n')
    code, _, err = run(submit_args(slurm_env), capsys)
    assert code == 2 and "Requested node configuration is not available" in err and err.count("\n") == 1
    assert log.read_text().strip() == "scancel 41"


def test_status_through_the_cli_with_stand_in_scontrol(slurm_env, capsys, tmp_path):
    rec = fixture_submission(tmp_path, "submission_shard1_oom")
    d = FIX / "submission_shard1_oom"
    fake_command(slurm_env["bin"], "scontrol",
                 f'case "$*" in *" 16") /bin/cat {d / "scontrol_plan.txt"};; *" 17") /bin/cat {d / "scontrol_array.txt"};; '
                 f'*) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1;; esac\n')
    index_add("17", rec["_dir"])
    code, out, err = run(["slurm", "status", "17", "--json"], capsys)
    assert code == 3, err
    data = json.loads(out)
    assert data["oom_shards"] == [1] and data["tasks"][1]["victim_case"] == "case_1"
    assert "shard 1" in err and "OUT_OF_MEMORY" in err
    code2, out2, _ = run(["slurm", "status", "17_1", "--json"], capsys)      # an array task id finds it too
    assert code2 == 3 and json.loads(out2)["submission_dir"] == rec["_dir"]
    code3, out3, err3 = run(["slurm", "status", rec["_dir"]], capsys)         # and the folder itself
    assert code3 == 3
    assert "shard 1" in out3 and "OUT_OF_MEMORY" in out3 and err3 == ""     # without --json the result is on stdout


def test_status_unknown_job_is_bad_input(slurm_env, capsys):
    code, out, err = run(["slurm", "status", "999", "--json"], capsys)
    assert code == 2 and json.loads(out)["outcome"] == "bad_input" and err.count("\n") == 1


def test_status_without_slurm_commands_is_infra(slurm_env, capsys, tmp_path):
    rec = fixture_submission(tmp_path, "submission_shard1_oom")
    code, _, err = run(["slurm", "status", rec["_dir"]], capsys)
    assert code == 6 and "not a Slurm host" in err and "Traceback" not in err


def test_slurm_help(capsys):
    code, out, _ = run(["slurm", "--help"], capsys)
    assert code == 0 and "submit" in out and "status" in out
