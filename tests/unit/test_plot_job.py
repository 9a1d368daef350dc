"""runner.run.plot_job: memory.png drawn while the container goes away, never a different picture.

The speculative render is used only when the title (dataset, outcome, cap) it drew is the one the
final report asks for; otherwise the plot is drawn again at the end.  A render that starts after the
result was asked for is refused (no two writers of memory.png).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from runner.run import plot_job
from runner.run.plot_job import PlotJob, guess_title, plot_title

pytest.importorskip("matplotlib")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "timeline"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run_dir(tmp_path) -> Path:
    d = tmp_path / "Dataset501_Demo" / ".nnrun" / "runs" / "20261125-000000-abcdef"
    d.mkdir(parents=True)
    for name in ("timeline.jsonl", "events.jsonl", "agent.jsonl"):
        shutil.copy(FIXTURES / name, d / name)
    return d


class CountingDraw:
    def __init__(self, monkeypatch):
        self.titles: list[str] = []
        real = PlotJob._draw

        def draw(job, title, limit_bytes):
            self.titles.append(title)
            return real(job, title, limit_bytes)
        monkeypatch.setattr(PlotJob, "_draw", draw)


def test_without_speculation_result_draws(run_dir, monkeypatch):
    counter = CountingDraw(monkeypatch)
    job = PlotJob(run_dir).prewarm()
    path = job.result("t", 2 << 30)
    assert Path(path) == run_dir / "memory.png" and Path(path).read_bytes()[:8] == PNG
    assert counter.titles == ["t"]


def test_a_foreseen_title_is_drawn_once(run_dir, monkeypatch):
    counter = CountingDraw(monkeypatch)
    job = PlotJob(run_dir).prewarm()
    job.speculate("Dataset501_Demo  ·  outcome ok  ·  cap 2 GiB", 2 << 30)
    path = job.result("Dataset501_Demo  ·  outcome ok  ·  cap 2 GiB", 2 << 30)
    assert Path(path).read_bytes()[:8] == PNG
    assert counter.titles == ["Dataset501_Demo  ·  outcome ok  ·  cap 2 GiB"]


@pytest.mark.parametrize("final", [("Dataset501_Demo  ·  outcome interrupted  ·  cap 2 GiB", 2 << 30),
                                   ("Dataset501_Demo  ·  outcome ok  ·  cap 2 GiB", (2 << 30) + 1)])
def test_a_different_title_or_cap_is_drawn_again(run_dir, monkeypatch, final):
    counter = CountingDraw(monkeypatch)
    job = PlotJob(run_dir)
    job.speculate("Dataset501_Demo  ·  outcome ok  ·  cap 2 GiB", 2 << 30)
    job.result(*final)
    assert counter.titles == ["Dataset501_Demo  ·  outcome ok  ·  cap 2 GiB", final[0]]


def test_a_failed_speculation_is_drawn_again_and_errors_surface(run_dir, monkeypatch):
    job = PlotJob(run_dir)
    calls = []

    def broken(title, limit):
        calls.append(title)
        raise RuntimeError("no fonts")
    monkeypatch.setattr(job, "_draw", broken)
    job.speculate("x", 1)
    with pytest.raises(RuntimeError, match="no fonts"):
        job.result("x", 1)
    assert calls == ["x", "x"]


def test_no_render_starts_after_the_result(run_dir, monkeypatch):
    counter = CountingDraw(monkeypatch)
    job = PlotJob(run_dir)
    job.result("final", 1 << 30)
    job.speculate("late", 1 << 30)
    assert counter.titles == ["final"]


def test_no_title_no_speculation(run_dir, monkeypatch):
    counter = CountingDraw(monkeypatch)
    job = PlotJob(run_dir)
    job.speculate(None, None)
    job.result("final", 1 << 30)
    assert counter.titles == ["final"]


class FakeMonitor:
    samples, version, limit, peak_anon, peak_usage = 10, 1, 2 << 30, 1 << 30, 1 << 30

    def __init__(self, first, last):
        self.oom_first, self.oom_last = first, last


def _status(run_dir: Path, **fields) -> None:
    base = {"returncode": 0, "main_pid": 7, "phase": "done", "oom_kill_start": 0, "oom_kill_end": 0,
            "limit_bytes": 2 << 30, "worker_exits": []}
    (run_dir / "status.json").write_text(json.dumps({**base, **fields}))


def test_guess_title_ok_and_oom(run_dir):
    _status(run_dir)
    assert guess_title(run_dir, FakeMonitor(0, 0), None) == (plot_title("Dataset501_Demo", "ok", 2 << 30), 2 << 30)
    _status(run_dir, returncode=1, phase="preprocessing", oom_kill_end=1)
    assert guess_title(run_dir, FakeMonitor(0, 1), None)[0] == plot_title("Dataset501_Demo", "oom", 2 << 30)


def test_guess_title_without_status_is_none(run_dir):
    assert guess_title(run_dir, FakeMonitor(0, 0), None) == (None, None)


def test_plot_title_is_the_reports():
    assert plot_title("Dataset501_Demo", "oom", int(1.2 * 2**30)) == "Dataset501_Demo  ·  outcome oom  ·  cap 1.2 GiB"


def test_importing_plot_job_does_not_import_matplotlib():
    import subprocess
    import sys
    code = "import sys, runner.run.plot_job, runner.run.preprocess; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "False"
    assert plot_job.PLOT_FILE == "memory.png"


# -- when the warm-up starts ----------------------------------------------------------------------

def test_warm_up_cue_waits_for_the_last_fingerprint_case():
    from runner.run.plot_job import WarmUpCue
    cue = WarmUpCue(fingerprint_cases=3, started=0.0)
    assert not cue.due([{"event": "warm_workers"}], 0.5)
    assert not cue.due([{"event": "phase_start", "phase": "fingerprint"}], 1.0)
    assert not cue.due([{"event": "phase", "phase": "fingerprint"}], 1.0)      # the supervisor's
    assert not cue.due([{"event": "case_end", "phase": "fingerprint", "case": "a"}], 2.0)
    assert not cue.due([{"event": "case_end", "phase": "fingerprint", "case": "b"}], 2.1)
    assert not cue.due([], 2.2)
    assert cue.due([{"event": "case_end", "phase": "fingerprint", "case": "c"}], 2.3)
    assert not cue.due([{"event": "phase_end", "phase": "fingerprint"}], 5.0)   # once only


def test_warm_up_cue_counts_every_event_of_a_batch():
    from runner.run.plot_job import WarmUpCue
    cue = WarmUpCue(fingerprint_cases=2, started=0.0)
    assert cue.due([{"event": "case_end", "phase": "fingerprint", "case": "a"},
                    {"event": "case_end", "phase": "fingerprint", "case": "b"}], 1.0)


@pytest.mark.parametrize("event", [{"event": "phase_end", "phase": "fingerprint"},
                                   {"event": "phase", "phase": "planning"},
                                   {"event": "phase", "phase": "preprocessing"}])
def test_warm_up_cue_fires_at_a_phase_change_when_the_cases_are_not_counted(event):
    from runner.run.plot_job import WarmUpCue
    cue = WarmUpCue(fingerprint_cases=100, started=0.0)
    assert not cue.due([{"event": "case_end", "phase": "preprocessing", "case": "a"}], 1.0)
    assert cue.due([event], 1.0)


def test_warm_up_cue_falls_back_to_a_time():
    from runner.run.plot_job import WarmUpCue
    cue = WarmUpCue(fingerprint_cases=10, started=100.0)
    assert not cue.due([], 100.0 + WarmUpCue.FALLBACK_S - 0.1)
    assert cue.due([], 100.0 + WarmUpCue.FALLBACK_S)


def test_plot_job_warms_up_once_when_its_cue_fires(tmp_path, monkeypatch):
    from runner.run.plot_job import WarmUpCue
    warmed = []
    monkeypatch.setattr(PlotJob, "prewarm", lambda self: warmed.append(1) or self)
    job = PlotJob(tmp_path, WarmUpCue(fingerprint_cases=1, started=time.monotonic()))
    job.observe([{"event": "phase_start", "phase": "fingerprint"}])
    assert warmed == []
    job.observe([{"event": "case_end", "phase": "fingerprint", "case": "a"}])
    job.observe([])
    assert warmed == [1]
