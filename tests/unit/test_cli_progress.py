"""runner.cli.progress: live progress on stderr (pure, no Docker).

* ``ProgressState`` over a real event sequence (the supervisor's phases and
  OOM kill, the agent's case events, as a run with -np 2 produces them).
* ``PlainProgress``: one line per phase change and finished case on stderr,
  memory at most every 10 s.
* ``RichProgress``: renders to a (fake) terminal without error.
* ``make_progress``: Quiet / Plain / Rich.

Regression guarded here: rich's ``Live`` calls ``get_renderable`` in its own
constructor, so ``RichProgress`` must set up the state ``_render`` reads first
(it once did not, and ``nnrun preprocess`` on a terminal ended as ``bug``).
"""
from __future__ import annotations

import io
import sys

import pytest

from runner.cli import progress as cli_progress
from runner.cli.progress import PlainProgress, ProgressState, QuietProgress, RichProgress, make_progress
from runner.units import format_bytes

MIB = 2**20
CAP = 2000 * MIB
PRE = {"phase": "preprocessing", "configuration": "3d_fullres"}
FP = {"phase": "fingerprint", "configuration": None}

# (event, the line ProgressState.apply_event returns) - a worker OOM in 3d_fullres with -np 2,
# in the order the host's watcher passes the supervisor's and the agent's events on.
SEQUENCE = [
    ({"event": "run_start", "cases": 6, "limit_bytes": CAP, "log_path": "/x/nnunet.log", "run_dir": "/x"}, None),
    ({"t": 1.0, "event": "supervisor_start", "cgroup_version": 1, "limit_bytes": CAP, "oom_kill": 0}, None),
    ({"t": 1.0, "event": "phase", "phase": "startup", "configuration": None}, None),
    ({"t": 1.1, "event": "agent_start", "pid": 7, "argv": ["nnUNetv2_plan_and_preprocess"]}, None),
    ({"t": 1.2, "event": "phase", **FP}, "phase: fingerprint extraction"),
    ({"t": 1.2, "event": "phase_start", "pid": 7, **FP}, None),
    ({"t": 1.3, "event": "worker_start", "pid": 33, **FP}, None),
    ({"t": 1.4, "event": "case_start", "pid": 33, "case": "case000", **FP}, None),
    ({"t": 1.6, "event": "case_end", "pid": 33, "case": "case000", "peak_rss_bytes": 50_000_000, "duration_s": 0.2,
      **FP}, "  fingerprint extraction: case000 done (1/6), worker peak 47.7 MiB in 0.2 s"),
    ({"t": 1.7, "event": "phase", "phase": "planning", "configuration": None}, "phase: experiment planning"),
    ({"t": 1.8, "event": "phase", "phase": "preprocessing", "configuration": None}, "phase: preprocessing"),
    ({"t": 1.8, "event": "phase", **PRE}, "phase: preprocessing 3d_fullres"),
    ({"t": 1.8, "event": "phase", **PRE}, None),                                   # repeated: no new line
    ({"t": 2.0, "event": "case_start", "pid": 68, "case": "case000", **PRE}, None),
    ({"t": 2.0, "event": "case_start", "pid": 69, "case": "case001", **PRE}, None),
    ({"t": 2.1, "event": "case_end", "pid": 69, "case": "case001", "peak_rss_bytes": 433 * MIB, "duration_s": 0.1,
      **PRE}, "  preprocessing 3d_fullres: case001 done (1/6), worker peak 433 MiB in 0.1 s"),
    ({"t": 2.1, "event": "case_start", "pid": 69, "case": "case002", **PRE}, None),
    ({"t": 2.2, "event": "case_error", "pid": 68, "case": "case000", "error": "ValueError: x", "duration_s": 0.2,
      **PRE}, "  preprocessing 3d_fullres: case000 failed (2/6) in 0.2 s"),
    ({"t": 2.2, "event": "case_start", "pid": 68, "case": "case003", **PRE}, None),
    ({"t": 2.3, "event": "case_end", "pid": 68, "case": "case003", **PRE},
     "  preprocessing 3d_fullres: case003 done (3/6)"),
    ({"t": 2.3, "event": "case_start", "pid": 68, "case": "case004", **PRE}, None),
    ({"t": 6.0, "event": "oom_kill", "count": 1, **PRE}, "  OOM kill in the memory cgroup (preprocessing 3d_fullres)"),
    ({"t": 6.0, "event": "worker_exit", "pid": 69, "main_alive": True, "oom_kill_before": 0, "oom_kill_after": 1,
      **PRE}, None),
    ({"t": 9.0, "event": "watchdog", "message": "nnU-Net still running 3 s after an OOM kill in preprocessing: "
                                                "ending it (it would hang)"},
     "  nnU-Net still running 3 s after an OOM kill in preprocessing: ending it (it would hang)"),
    ({"t": 9.5, "event": "child_exit", "returncode": 1, **PRE}, None),
    ({"t": 9.5, "event": "phase", "phase": "done", "configuration": None}, None),
]


# The early diagnosis line (runner.diagnosis.early) the sinks print once the killed worker is known and the poll
# that showed it is complete: in SEQUENCE, right after the first event from after the worker_exit at the counter's
# rise (the watchdog's).
EARLY_LINE = ("nnrun: oom (out of memory): the kernel OOM-killed a worker (pid 69) while preprocessing case002 "
              "(3d_fullres) (full report when nnU-Net has ended)")


def _expected_plain_lines() -> list[str]:
    lines = []
    for event, line in SEQUENCE:
        if line:
            lines.append(line)
        if event.get("event") == "watchdog":
            lines.append(EARLY_LINE)
    return lines


def test_progress_state_over_a_real_event_sequence():
    st = ProgressState()
    for event, line in SEQUENCE:
        assert st.apply_event(event) == line, event
        if event.get("event") == "run_start":
            assert (st.cases_total, st.limit_bytes, st.log_path) == (6, CAP, "/x/nnunet.log")
        if event.get("event") == "case_start" and event["case"] == "case001":
            assert st.in_flight == {68: "case000", 69: "case001"}
        if event.get("event") == "phase" and event["phase"] == "planning":
            assert st.in_flight == {} and st.cases_done() == 0      # a phase change clears the cases in flight
    # "done" is not a phase of its own: the last real phase stays.
    assert (st.phase, st.configuration) == ("preprocessing", "3d_fullres")
    assert st.done == {("fingerprint", None): 1, ("preprocessing", "3d_fullres"): 3}
    assert st.cases_done() == 3
    assert st.in_flight == {69: "case002", 68: "case004"}
    assert st.oom_kills == 1


def test_oom_kill_counter_only_grows():
    st = ProgressState()
    st.apply_event({"event": "oom_kill", "count": 2, **PRE})
    st.apply_event({"event": "oom_kill", "count": 1, **PRE})
    assert st.oom_kills == 2


def test_memory_samples_update_the_state():
    st = ProgressState()
    assert st.memory_text() == "memory: -"
    st.apply_sample({"t": 1.0, "anon": 900 * MIB, "file": 100 * MIB, "usage": 1000 * MIB, "oom_kill": 0,
                     "limit": CAP})
    st.apply_sample({"t": 1.1, "anon": 700 * MIB, "file": 0, "usage": 700 * MIB, "oom_kill": 0, "limit": CAP})
    assert st.anon_bytes == 700 * MIB and st.peak_anon_bytes == 900 * MIB and st.limit_bytes == CAP
    assert st.memory_text() == "memory: anon 700 MiB of 2 GiB cap, peak 900 MiB"
    st.apply_sample({"anon": 1 * MIB, "file": 5 * MIB, "limit": None})            # no limit: the last one stays
    assert st.limit_bytes == CAP
    assert st.memory_text() == "memory: anon 1 MiB of 2 GiB cap (+5 MiB page cache), peak 900 MiB"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name):           # anything else from the real time module
        import time
        return getattr(time, name)


def _sample(anon_mib: int) -> dict:
    return {"t": 0.0, "anon": anon_mib * MIB, "file": 0, "usage": anon_mib * MIB, "oom_kill": 0, "limit": CAP}


def test_plain_progress_writes_lines_to_stderr(capsys, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(cli_progress, "time", clock)
    p = PlainProgress()
    p.stage("checking 12 image and label files of Dataset502_Mixed to the end")
    for done in range(13):
        p.file_check(done, 12)
    for event, _ in SEQUENCE:
        p.event(event)
    p.nnunet_output(b"nnU-Net's own output\n")        # not shown without --nnunet-output
    p.close()
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert lines[0] == "nnrun: checking 12 image and label files of Dataset502_Mixed to the end"
    checks = [ln for ln in lines if ln.startswith("  files checked:")]
    assert checks[-1] == "  files checked: 12/12" and 3 <= len(checks) <= 6
    assert lines[len(checks) + 1:] == _expected_plain_lines()
    assert "nnU-Net's own output" not in out.err


def test_plain_progress_prints_memory_at_most_every_10_s(capsys, monkeypatch):
    clock = FakeClock(1000.0)
    monkeypatch.setattr(cli_progress, "time", clock)
    p = PlainProgress()
    printed_at = []
    for step in range(0, 251):                          # 25 s of samples at 10 Hz
        clock.now = 1000.0 + step / 10
        p.memory(_sample(100 + step))
        err = capsys.readouterr().err
        if err:
            assert err.startswith("  memory: anon ") and err.count("\n") == 1
            printed_at.append(clock.now)
    assert printed_at == [1000.0, 1010.0, 1020.0]
    assert p.state.peak_anon_bytes == 350 * MIB


def test_plain_progress_memory_line_text(capsys, monkeypatch):
    monkeypatch.setattr(cli_progress, "time", FakeClock(5000.0))
    p = PlainProgress()
    p.memory(_sample(1200))
    assert capsys.readouterr().err == f"  memory: anon {format_bytes(1200 * MIB)} of 2 GiB cap, peak 1.2 GiB\n"


def test_plain_progress_passes_nnunet_output_through_when_asked(capsys):
    p = PlainProgress(show_nnunet_output=True)
    p.nnunet_output("Preprocessing cases: 50%|█████     | 3/6\n".encode())
    assert "Preprocessing cases: 50%|█████     | 3/6" in capsys.readouterr().err


@pytest.fixture
def terminal(monkeypatch):
    """Make RichProgress render to an in-memory terminal of 120 columns."""
    import rich.console

    buffer = io.StringIO()
    real = rich.console.Console

    def fake_console(*args, **kwargs):
        kwargs.pop("stderr", None)
        return real(file=buffer, force_terminal=True, width=120, color_system="standard")

    monkeypatch.setattr(rich.console, "Console", fake_console)
    return buffer


def _strip_escapes(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def _plain_text(renderable) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=False, width=120, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def test_rich_progress_can_be_constructed(terminal):
    """Plain construction works (Live renders once in its constructor)."""
    p = RichProgress()
    try:
        p.event({"event": "run_start", "cases": 6, "limit_bytes": CAP})
        p.memory(_sample(100))
    finally:
        p.close()


def test_make_progress_on_a_terminal_gives_a_working_rich_progress(terminal):
    p = make_progress(False, tty=True)
    assert isinstance(p, RichProgress)
    p.close()


def test_rich_progress_renders_to_a_terminal(terminal):
    p = RichProgress()
    assert p.console.file is terminal and p.console.is_terminal
    try:
        p.stage("checking 12 image and label files of Dataset502_Mixed to the end")
        p.file_check(3, 12)
        assert "3/12 checked to the end" in _plain_text(p._render())
        p.file_check(12, 12)
        for event, _ in SEQUENCE:
            p.event(event)
            p.memory(_sample(1900))
        p.nnunet_output(b"hidden\n")
        panel = _plain_text(p._render())
        p.live.refresh()
    finally:
        p.close()
    assert "phase" in panel and "preprocessing 3d_fullres" in panel
    assert "3/6 cases" in panel
    assert "case002 (pid 69)" in panel and "case004 (pid 68)" in panel
    assert "anon 1.9 GiB of 2 GiB cap" in panel
    assert "OOM kills" in panel and "1" in panel.split("OOM kills", 1)[1]
    written = terminal.getvalue()
    assert "nnrun: checking 12 image and label files" in written
    # Phase changes, the OOM kill and the watchdog are printed above the panel; finished cases are not.
    for line in ("phase: fingerprint extraction", "phase: preprocessing 3d_fullres",
                 "OOM kill in the memory cgroup (preprocessing 3d_fullres)", "ending it (it would hang)"):
        assert line in written
    # (rich may wrap the long line; its "nnrun: oom (out of memory):" is coloured)
    assert " ".join(_strip_escapes(written).split()).count(EARLY_LINE) == 1
    assert "case001 done" not in written
    assert "hidden" not in written
    assert not p._started
    p.close()                    # twice is fine


def test_rich_progress_before_any_event_and_memory_in_red(terminal):
    p = RichProgress()
    try:
        assert "starting" in _plain_text(p._render())
        p.event({"event": "run_start", "cases": 6, "limit_bytes": CAP})
        p.memory(_sample(1950))              # above 90 % of the cap
        text = _plain_text(p._render())
        assert "anon 1.9 GiB of 2 GiB cap" in text
    finally:
        p.close()


def test_make_progress_picks_the_renderer(terminal, monkeypatch):
    assert isinstance(make_progress(True), QuietProgress)
    assert isinstance(make_progress(True, tty=True), QuietProgress)
    assert isinstance(make_progress(False, tty=False), PlainProgress)
    rich_one = make_progress(False, tty=True)
    assert isinstance(rich_one, RichProgress)
    rich_one.close()
    # nnU-Net's raw output and a live panel do not mix: plain lines then.
    plain = make_progress(False, show_nnunet_output=True, tty=True)
    assert isinstance(plain, PlainProgress) and plain.show_nnunet_output
    quiet = make_progress(True, show_nnunet_output=True)
    assert isinstance(quiet, QuietProgress) and quiet.show_nnunet_output

    class Stream(io.StringIO):
        def __init__(self, tty):
            super().__init__()
            self._tty = tty

        def isatty(self):
            return self._tty

    monkeypatch.setattr(sys, "stderr", Stream(True))
    rich_one = make_progress(False)
    assert isinstance(rich_one, RichProgress)
    rich_one.close()
    monkeypatch.setattr(sys, "stderr", Stream(False))
    assert isinstance(make_progress(False), PlainProgress)


def test_quiet_progress_prints_nothing(capsys):
    q = QuietProgress()
    q.stage("x")
    q.file_check(1, 2)
    for event, _ in SEQUENCE:
        q.event(event)
    q.memory(_sample(100))
    q.close()
    assert capsys.readouterr() == ("", "")
    assert q.state.anon_bytes == 100 * MIB


def test_a_retry_attempt_counts_its_cases_afresh_with_resumed_ones_done():
    """After an OOM, --retry starts a new attempt (a new run_start); cases complete from the first
    attempt are reported by the agent's resume event and never counted twice (no '7/6')."""
    st = ProgressState()
    st.apply_event({"event": "run_start", "cases": 6, "limit_bytes": 1 << 30})
    st.apply_event({"event": "phase", "phase": "preprocessing", "configuration": "3d_fullres"})
    for i in range(5):       # c4 ended, but the kill came before its files were all in place
        st.apply_event({"event": "case_end", "case": f"c{i}", "pid": 9, "phase": "preprocessing",
                        "configuration": "3d_fullres"})
    st.apply_event({"event": "run_start", "cases": 6, "limit_bytes": 1 << 30})
    st.apply_event({"event": "resume", "configuration": "3d_fullres", "complete": 4, "pending": 2})
    st.apply_event({"event": "phase", "phase": "preprocessing", "configuration": "3d_fullres"})
    lines = [st.apply_event({"event": "case_end", "case": c, "pid": 11, "phase": "preprocessing",
                             "configuration": "3d_fullres"}) for c in ("c4", "c5")]
    assert "(5/6)" in lines[0] and "(6/6)" in lines[1]
