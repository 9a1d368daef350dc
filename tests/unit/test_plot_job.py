"""runner.run.plot_job: memory.png drawn while the container goes away, never a different picture.

The speculative render is used only when the title (dataset, outcome, cap) it drew is the one the
final report asks for; otherwise the plot is drawn again at the end.  A render that starts after the
result was asked for is refused (no two writers of memory.png).
"""
from __future__ import annotations

import json
import shutil
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
