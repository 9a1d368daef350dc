"""memory.png off the command's critical path.

Rendering the plot after the container is gone used to add ~0.7 s to every
run (importing matplotlib, loading fonts, drawing).  :class:`PlotJob` moves
that work to where nobody waits for it:

* :meth:`PlotJob.prewarm`, called when :class:`WarmUpCue` says a core is
  likely idle: a thread imports matplotlib and renders a tiny throw-away
  figure (fonts, Agg; ~0.7 CPU-seconds).  Not at container start: nnU-Net's
  main process and its warm workers import on both cores then, and the
  warm-up slowed them.  The cue is the end of the fingerprint's last case
  (nnU-Net's main process then computes the intensity statistics alone, ~3 s
  on 10 small cases), else planning (main process alone), else 30 s into the
  run.  (Not at a lower priority: an unprivileged thread cannot raise it
  again, and the final render must never wait for a starved thread that
  holds an import lock or the GIL.);
* :meth:`PlotJob.speculate`, called when the supervisor has written its
  status and the host has taken its last reading (nnU-Net has ended, the
  run's JSON-lines files are complete): a thread renders ``memory.png`` with
  the outcome the facts at hand give, while the container exits and is
  removed;
* :meth:`PlotJob.result`, called where the plot used to be rendered: when the
  title it would draw (dataset, outcome, cap) is the one the speculative
  render drew, the file is already there; otherwise (the outcome changed,
  e.g. an interrupt in the last moment, or the render failed) it renders now,
  as before.

The command still returns only once ``memory.png`` is written: what the run
reports is on disk when the user sees the prompt.  The figure covers the run
up to the host's last reading; the container's teardown after that is not
drawn (nnU-Net had ended).
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

from runner.plot.data import PlotData, plot_data_from_files
from runner.plot.render import render_memory_png
from runner.rundir import AGENT_EVENTS_FILE, EVENTS_FILE, PLOT_FILE, TIMELINE_FILE


def _warm_up() -> None:
    """Import matplotlib and draw a tiny figure with every kind of artist the real plot uses."""
    from runner.plot.data import CaseSpan, MemorySample, PhaseSpan
    data = PlotData(samples=[MemorySample(0.0, 1 << 20, 1 << 19, 3 << 19), MemorySample(1.0, 2 << 20, 1 << 19, 5 << 19)],
                    phases=[PhaseSpan("preprocessing", "3d_fullres", 0.0, 1.0)],
                    cases=[CaseSpan("case000", 1, 0.1, 0.9, 1 << 20), CaseSpan("case001", 2, 0.2, None, None)],
                    oom_kill_times=[0.5], limit_bytes=4 << 20, title="warm-up")
    fd, tmp = tempfile.mkstemp(suffix=".png", prefix="nnrun-plot-warm-")
    os.close(fd)
    try:
        render_memory_png(data, Path(tmp), width_px=400, height_px=300)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


class WarmUpCue:
    """Says when to start the plot's warm-up, from the run's events (pure: no clock of its own)."""

    FALLBACK_S = 30.0

    def __init__(self, fingerprint_cases: int, started: float) -> None:
        self.fingerprint_cases = max(1, fingerprint_cases)
        self.started = started
        self.fingerprint_done = 0
        self.fired = False

    def due(self, events: list[dict], now: float) -> bool:
        """Whether the warm-up should start now, given the events read since the last call (True once)."""
        if self.fired:
            return False
        phase_changed = False
        for event in events:
            kind, phase = event.get("event"), event.get("phase")
            if kind == "case_end" and phase == "fingerprint":
                self.fingerprint_done += 1
            phase_changed = phase_changed or (kind == "phase_end"                                  # the agent's
                                              or (kind == "phase" and phase in ("planning", "preprocessing")))
        self.fired = (phase_changed or self.fingerprint_done >= self.fingerprint_cases
                      or now - self.started >= self.FALLBACK_S)
        return self.fired


class PlotJob:
    def __init__(self, run_dir: Path, cue: WarmUpCue | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.cue = cue
        self._warm: threading.Thread | None = None
        self._render: threading.Thread | None = None
        self._title: str | None = None
        self._limit: int | None = None
        self._path: Path | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._closed = False        # result() was called: no render may start any more

    # -- while the container runs ---------------------------------------------------------------
    def prewarm(self) -> PlotJob:
        def run() -> None:
            try:
                _warm_up()
            except Exception:  # noqa: BLE001 - e.g. no matplotlib: result() reports it as before
                pass
        self._warm = threading.Thread(target=run, name="plot-warm", daemon=True)
        self._warm.start()
        return self

    def observe(self, events: list[dict]) -> None:
        """The run's events read since the last call (maybe none): warm up when the cue says so."""
        if self.cue is not None and self.cue.due(events, time.monotonic()):
            self.prewarm()

    def speculate(self, title: str | None, limit_bytes: int | None) -> None:
        """Render now, in the background, with this title and cap (nnU-Net has ended; the data is complete)."""
        if title is None:
            return

        def run() -> None:
            if self._warm is not None:
                self._warm.join()
            try:
                self._path = self._draw(title, limit_bytes)
            except BaseException as err:  # noqa: BLE001 - result() renders again and reports
                self._error = err
        with self._lock:
            if self._render is not None or self._closed:
                return
            self._title, self._limit = title, limit_bytes
            self._render = threading.Thread(target=run, name="plot-render", daemon=True)
            self._render.start()

    # -- at the end -----------------------------------------------------------------------------
    def result(self, title: str, limit_bytes: int | None) -> str:
        """The path of memory.png drawn with ``title``; raises what rendering raised."""
        with self._lock:
            self._closed = True
        if self._render is not None:
            self._render.join()
            if (self._title, self._limit) == (title, limit_bytes) and self._error is None and self._path is not None:
                return str(self._path)
        elif self._warm is not None:
            self._warm.join(timeout=30)
        return str(self._draw(title, limit_bytes))

    def _draw(self, title: str, limit_bytes: int | None) -> Path:
        data = plot_data_from_files(self.run_dir / TIMELINE_FILE, self.run_dir / EVENTS_FILE,
                                    self.run_dir / AGENT_EVENTS_FILE, limit_bytes, title)
        return render_memory_png(data, self.run_dir / PLOT_FILE)


def plot_title(dataset_name: str, outcome: str, limit_bytes: int | None) -> str:
    from runner.units import format_bytes
    return f"{dataset_name}  ·  outcome {outcome}  ·  cap {format_bytes(limit_bytes or 0)}"


def guess_title(run_dir: Path, monitor, fallback_limit_bytes: int | None) -> tuple[str | None, int | None]:
    """(title, cap) the final report's plot will most likely have, from what is known when nnU-Net has ended.

    The outcome comes from the same classification the report uses, over the supervisor's status and the
    host's readings so far (the container's exit code and the engine's word only matter when no cgroup
    counter could be read; then the guess may differ and :meth:`PlotJob.result` renders again).
    """
    from runner.diagnosis.classify import classify
    from runner.run.postmortem import facts_from_run_folder
    from runner.rundir import STATUS_FILE, SupervisorStatus

    try:
        status = SupervisorStatus.from_json(json.loads((Path(run_dir) / STATUS_FILE).read_text()))
        facts, _, _ = facts_from_run_folder(Path(run_dir), status, host_oom_first=monitor.oom_first,
                                            host_oom_last=monitor.oom_last)
        outcome = classify(facts).outcome.value
        limit = monitor.limit or status.limit_bytes or fallback_limit_bytes
        return plot_title(Path(run_dir).parents[2].name, outcome, limit), limit
    except Exception:  # noqa: BLE001 - only a guess: the plot is then drawn at the end, as before
        return None, None
