"""Live progress on stderr for ``nnrun preprocess`` (the CLI layer: this and cli.py print).

:class:`ProgressState` is a pure state machine over the run's events (the
supervisor's phases, the agent's case events) and the host's memory samples.
Two renderers sit on it: :class:`RichProgress` (a live panel on a terminal:
phase, case n/N, the cases in flight, a memory bar against the cap) and
:class:`PlainProgress` (one line per phase change and finished case, for logs
and CI, where stderr is not a terminal).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from runner.diagnosis.early import EarlyOom
from runner.diagnosis.wording import describe_phase
from runner.units import format_bytes


@dataclass
class ProgressState:
    cases_total: int = 0
    limit_bytes: int | None = None
    phase: str | None = None
    configuration: str | None = None
    done: dict = field(default_factory=dict)          # (phase, configuration) -> cases finished
    in_flight: dict = field(default_factory=dict)     # worker pid -> case
    anon_bytes: int | None = None
    file_bytes: int | None = None
    peak_anon_bytes: int = 0
    oom_kills: int = 0
    log_path: str | None = None

    def apply_event(self, e: dict) -> str | None:
        """Update from one event; return a line worth printing in plain mode, if any."""
        kind = e.get("event")
        if kind == "run_start":           # also each --retry attempt: count that attempt's cases afresh
            self.cases_total = int(e.get("cases") or 0)
            self.done.clear()
            self.in_flight.clear()
            self.phase = self.configuration = None
            self.limit_bytes = e.get("limit_bytes")
            self.log_path = e.get("log_path")
            return None
        if kind == "phase":
            phase, config = e.get("phase"), e.get("configuration")
            if phase in ("done", "startup") or (phase, config) == (self.phase, self.configuration):
                return None
            self.phase, self.configuration = phase, config
            self.in_flight.clear()
            return f"phase: {describe_phase(phase, config)}"
        if kind == "case_start":
            self.in_flight[e.get("pid")] = e.get("case")
            return None
        if kind in ("case_end", "case_error"):
            self.in_flight.pop(e.get("pid"), None)
            key = (e.get("phase"), e.get("configuration"))
            self.done[key] = self.done.get(key, 0) + 1
            peak = e.get("peak_rss_bytes")
            where = describe_phase(e.get("phase"), e.get("configuration"))
            status = "failed" if kind == "case_error" else "done"
            return (f"  {where}: {e.get('case')} {status} ({self.done[key]}/{self.cases_total})"
                    + (f", worker peak {format_bytes(peak)}" if peak else "")
                    + (f" in {e.get('duration_s'):.1f} s" if e.get("duration_s") is not None else ""))
        if kind == "resume" and e.get("complete"):
            # Cases an earlier attempt completed count as done (they are not preprocessed again).
            self.done[("preprocessing", e.get("configuration"))] = int(e["complete"])
            return None
        if kind == "oom_kill":
            self.oom_kills = max(self.oom_kills, int(e.get("count") or 0))
            return f"  OOM kill in the memory cgroup ({describe_phase(e.get('phase'), e.get('configuration'))})"
        if kind in ("watchdog", "thrashing"):
            return f"  {e.get('message')}"
        return None

    def apply_sample(self, s: dict) -> None:
        self.anon_bytes, self.file_bytes = s.get("anon"), s.get("file")
        self.limit_bytes = s.get("limit") or self.limit_bytes
        if self.anon_bytes:
            self.peak_anon_bytes = max(self.peak_anon_bytes, self.anon_bytes)

    def cases_done(self) -> int:
        return self.done.get((self.phase, self.configuration), 0)

    def memory_text(self) -> str:
        if self.anon_bytes is None:
            return "memory: -"
        cap = f" of {format_bytes(self.limit_bytes)} cap" if self.limit_bytes else ""
        return (f"memory: anon {format_bytes(self.anon_bytes)}{cap}"
                + (f" (+{format_bytes(self.file_bytes)} page cache)" if self.file_bytes else "")
                + f", peak {format_bytes(self.peak_anon_bytes)}")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class _BaseProgress:
    def __init__(self, show_nnunet_output: bool = False) -> None:
        self.state = ProgressState()
        self.show_nnunet_output = show_nnunet_output
        self.early_oom = EarlyOom()      # the diagnosis line as soon as the killed process is known

    def nnunet_output(self, chunk: bytes) -> None:
        if self.show_nnunet_output:
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()

    def memory(self, sample: dict) -> None:
        self.state.apply_sample(sample)

    def close(self) -> None:
        pass


class PlainProgress(_BaseProgress):
    """Line output for a stderr that is not a terminal."""

    MEMORY_EVERY_S = 10.0

    def __init__(self, show_nnunet_output: bool = False) -> None:
        super().__init__(show_nnunet_output)
        self._last_pct = -1
        self._last_memory_line = 0.0

    def stage(self, message: str) -> None:
        _err(f"nnrun: {message}")

    def file_check(self, done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        if pct // 25 != self._last_pct // 25 or done == total:
            _err(f"  files checked: {done}/{total}")
        self._last_pct = pct

    def event(self, event: dict) -> None:
        line = self.state.apply_event(event)
        if line:
            _err(line)
        early = self.early_oom.feed(event)
        if early:
            _err(early)

    def memory(self, sample: dict) -> None:
        super().memory(sample)
        now = time.monotonic()
        if now - self._last_memory_line >= self.MEMORY_EVERY_S:
            self._last_memory_line = now
            _err(f"  {self.state.memory_text()}")


class RichProgress(_BaseProgress):
    """A live panel on a terminal: phase, case n/N, the cases in flight, a memory bar.

    ``color=False`` (``--no-color``, ``NO_COLOR``): the same panel without any
    colour or other attribute escapes (rich's cursor movement stays: the panel
    is redrawn in place).  ``console``: a rich Console to draw on (tests).
    """

    def __init__(self, show_nnunet_output: bool = False, color: bool = True, console=None) -> None:
        super().__init__(show_nnunet_output)
        from rich.live import Live

        from runner.cli.terminal import make_console

        # (state first: Live calls get_renderable as soon as it is built)
        self._file_check: tuple[int, int] | None = None
        self._started = False
        self.color = color
        self.console = console if console is not None else make_console(color=color, stderr=True)
        self.live = Live(console=self.console, refresh_per_second=4, transient=True,
                         get_renderable=self._render)

    def _ensure_started(self) -> None:
        if not self._started:
            self.live.start()
            self._started = True

    def _line(self, text: str, style_headline: bool = False) -> None:
        """A line above the panel, wrapped between words for the terminal (rich would cut a long path)."""
        from runner.cli.terminal import fit_line, styled_headline

        fitted = fit_line(text, self.console.width)
        self.console.print(styled_headline(fitted) if style_headline else fitted, highlight=False, markup=False,
                           soft_wrap=True)

    def stage(self, message: str) -> None:
        self._line(f"nnrun: {message}")

    def file_check(self, done: int, total: int) -> None:
        self._file_check = (done, total)
        self._ensure_started()
        if done == total:
            self._file_check = None

    def event(self, event: dict) -> None:
        line = self.state.apply_event(event)
        self._ensure_started()
        if line and event.get("event") in ("phase", "oom_kill", "watchdog", "thrashing"):
            self._line(line)
        early = self.early_oom.feed(event)
        if early:
            self._line(early, style_headline=True)

    def _render(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        st = self.state
        grid = Table.grid(padding=(0, 1))
        grid.add_column(justify="right", style="bold")
        grid.add_column()
        if self._file_check:
            done, total = self._file_check
            grid.add_row("files", f"{done}/{total} checked to the end")
            return grid
        grid.add_row("phase", describe_phase(st.phase, st.configuration) if st.phase else "starting")
        bar_width = 30 if self.console.width >= 100 else 20       # an 80-column terminal: room for the text
        if st.cases_total and st.phase in ("verify", "fingerprint", "preprocessing"):
            bar = ProgressBar(total=st.cases_total, completed=st.cases_done(), width=bar_width)
            row = Table.grid(padding=(0, 1))
            row.add_row(bar, f"{st.cases_done()}/{st.cases_total} cases")
            grid.add_row("cases", row)
        if st.in_flight:
            grid.add_row("in flight", ", ".join(f"{c} (pid {p})" for p, c in sorted(st.in_flight.items())))
        if st.anon_bytes is not None and st.limit_bytes:
            bar = ProgressBar(total=st.limit_bytes, completed=min(st.anon_bytes, st.limit_bytes), width=bar_width,
                              complete_style="red" if st.anon_bytes > 0.9 * st.limit_bytes else "green")
            row = Table.grid(padding=(0, 1))
            row.add_row(bar, st.memory_text().removeprefix("memory: "))
            grid.add_row("memory", row)
        if st.oom_kills:
            grid.add_row("OOM kills", f"[red]{st.oom_kills}[/red]")
        return grid

    def close(self) -> None:
        if self._started:
            self.live.stop()
            self._started = False


class QuietProgress(_BaseProgress):
    def stage(self, message: str) -> None: pass
    def file_check(self, done: int, total: int) -> None: pass
    def event(self, event: dict) -> None: pass


def make_progress(quiet: bool, show_nnunet_output: bool = False, tty: bool | None = None, color: bool = True):
    """Quiet, a live panel on a terminal (in colour unless ``color`` is false), or plain lines."""
    if quiet:
        return QuietProgress(show_nnunet_output)
    if tty is None:
        tty = sys.stderr.isatty()
    if tty and not show_nnunet_output:
        return RichProgress(color=color)
    return PlainProgress(show_nnunet_output)
