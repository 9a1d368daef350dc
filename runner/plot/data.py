"""The plot's plain data, and its reading from the run folder's JSON lines files (no matplotlib here)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.rundir import read_jsonl


@dataclass(frozen=True)
class MemorySample:
    """One host-side reading of the container's memory cgroup."""

    t: float                    # unix time, seconds
    anon_bytes: int | None
    file_bytes: int | None      # page cache
    usage_bytes: int | None


@dataclass(frozen=True)
class PhaseSpan:
    """A phase of the run: ("fingerprint", None, t0, t1), ("preprocessing", "3d_fullres", t0, t1)."""

    phase: str
    configuration: str | None
    start: float
    end: float


@dataclass(frozen=True)
class CaseSpan:
    """One case processed by one worker process."""

    case: str
    pid: int
    start: float
    end: float | None           # None: never finished (killed, or in flight at the end)
    peak_rss_bytes: int | None


@dataclass(frozen=True)
class PlotData:
    samples: list[MemorySample]
    phases: list[PhaseSpan]
    cases: list[CaseSpan]
    oom_kill_times: list[float]     # when the oom_kill counter rose
    limit_bytes: int | None         # the cap (None: unlimited)
    title: str                      # e.g. "Dataset501_Demo  ·  outcome oom  ·  cap 1.2 GiB"


Box = tuple[float, float, float, float]        # x0, y0, x1, y1 in figure pixels (origin bottom left)


@dataclass(frozen=True)
class PlacedLabel:
    """A label as drawn: what it names, its text, where it is (figure pixels), its rotation."""

    kind: str                   # "phase", "case" or "cap"
    key: Any                    # the PhaseSpan, or the index of the case in PlotData.cases, or None
    text: str
    box: Box
    rotation: float = 0.0


@dataclass
class PlotLayout:
    """Where things went in the figure: for tests, and for a reader who wants to know why a label is missing."""

    bands: list[PhaseSpan]                      # the phases that got a shaded band, in time order
    labels: list[PlacedLabel]
    memory_axes: Box | None = None
    case_axes: Box | None = None
    cap_y: float | None = None                  # the cap line's height in figure pixels
    case_bars: dict[int, Box] | None = None     # index in PlotData.cases -> the bar

    def phase_labels(self) -> list[PlacedLabel]:
        return [lb for lb in self.labels if lb.kind == "phase"]

    def case_labels(self) -> list[PlacedLabel]:
        return [lb for lb in self.labels if lb.kind == "case"]


# -- look ------------------------------------------------------------------------

_NOT_DRAWN_PHASES = {"done", "startup"}
_OOM_DEDUP_S = 0.5
_PHASE_SLACK_S = 1.0        # the agent may start a configuration a moment before the supervisor reads its line


def _json_lines(path: Path | None) -> list[dict]:
    """The JSON objects of a JSON lines file (bad lines skipped, a missing file gives none)."""
    return read_jsonl(path) if path is not None else []


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _skipped(p: PhaseSpan, cases: list[CaseSpan], kills: list[float], started: list[tuple[float, str | None]],
             completed: set[str]) -> bool:
    """A preprocessing phase in which nnU-Net did nothing: it gets no band.

    nnU-Net announces every configuration it was asked for (``Configuration:
    3d_lowres...``) and then skips one the plans do not have, and it prints a
    bare ``Preprocessing...`` before the first; nnrun's agent never starts
    those, and a configuration complete from an earlier run starts no case.
    Kept: a phase in which a case ran or the OOM killer struck, and one the
    agent started but never completed (nnU-Net failed in it before its first
    case).
    """
    if p.phase != "preprocessing":
        return False
    if any(p.start <= c.start < p.end for c in cases) or any(p.start <= t <= p.end for t in kills):
        return False
    agent_started = p.configuration is not None and any(
        config == p.configuration and p.start - _PHASE_SLACK_S <= t < p.end for t, config in started)
    return not (agent_started and p.configuration not in completed)


def plot_data_from_files(timeline_jsonl: Path, events_jsonl: Path | None, agent_jsonl: Path | None,
                         limit_bytes: int | None, title: str) -> PlotData:
    """PlotData from a run folder's ``timeline.jsonl``, ``events.jsonl`` and ``agent.jsonl``.

    Missing files give empty lists; lines that do not parse (a kill can cut
    the last line) are skipped.  OOM kill times are the samples where the
    cgroup's ``oom_kill`` counter rose (the container's cgroup is fresh, so
    the counter starts at 0) together with the supervisor's ``oom_kill``
    events, deduplicated within 0.5 s.  A case without a peak RSS of its own
    (killed, in flight) gets the highest RSS the host sampler saw for its pid
    while it ran, when the timeline has per-process readings.
    """
    samples: list[MemorySample] = []
    oom_times: list[float] = []
    rss_by_pid: dict[int, list[tuple[float, int]]] = {}
    previous_oom = 0
    for obj in _json_lines(timeline_jsonl):
        t = _num(obj.get("t"))
        if t is None:
            continue
        samples.append(MemorySample(t=t, anon_bytes=_int(obj.get("anon")), file_bytes=_int(obj.get("file")),
                                    usage_bytes=_int(obj.get("usage"))))
        count = _int(obj.get("oom_kill"))
        if count is not None:
            if count > previous_oom:
                oom_times.append(t)
            previous_oom = count
        procs = obj.get("procs")
        if isinstance(procs, dict):
            for host_pid, info in procs.items():
                if not isinstance(info, dict):
                    continue
                rss = _int(info.get("rss"))
                pid = _int(info.get("ns_pid"))
                if pid is None:
                    pid = _int(host_pid)
                if rss is not None and pid is not None:
                    rss_by_pid.setdefault(pid, []).append((t, rss))
    samples.sort(key=lambda s: s.t)

    # Phases and OOM events of the supervisor.
    marks: list[tuple[float, str, str | None]] = []
    exit_times: list[float] = []
    last_event_t: float | None = None
    first_event_t: float | None = None
    for obj in _json_lines(events_jsonl):
        t = _num(obj.get("t"))
        if t is None:
            continue
        last_event_t = t if last_event_t is None else max(last_event_t, t)
        event = obj.get("event")
        if event == "phase" and isinstance(obj.get("phase"), str):
            configuration = obj.get("configuration")
            marks.append((t, obj["phase"], configuration if isinstance(configuration, str) else None))
        elif event == "oom_kill":
            oom_times.append(t)
        elif event == "child_exit":
            exit_times.append(t)
        elif event == "supervisor_start":
            first_event_t = t if first_event_t is None else min(first_event_t, t)
    marks.sort(key=lambda m: m[0])
    exit_times.sort()
    fallback_end = max([t for t in (last_event_t, samples[-1].t if samples else None) if t is not None],
                       default=None)
    phases: list[PhaseSpan] = []
    for i, (t, phase, configuration) in enumerate(marks):
        # A phase ends where the next begins, or when nnU-Net exited if earlier.
        exit_t = next((e for e in exit_times if e >= t), None)
        ends = [e for e in (marks[i + 1][0] if i + 1 < len(marks) else None, exit_t) if e is not None]
        end = min(ends) if ends else fallback_end
        if phase in _NOT_DRAWN_PHASES or end is None or end <= t:
            continue
        phases.append(PhaseSpan(phase=phase, configuration=configuration, start=t, end=end))
    # Start-up: from the container's start (the first sample, or the supervisor's first word) to nnU-Net's
    # first phase.
    begin = min([t for t in (samples[0].t if samples else None, first_event_t,
                             next((m[0] for m in marks if m[1] == "startup"), None)) if t is not None],
                default=None)
    if phases and begin is not None and begin < phases[0].start:
        phases.insert(0, PhaseSpan(phase="startup", configuration=None, start=begin, end=phases[0].start))

    # Cases of the agent: start and end paired by (pid, case, phase, configuration).
    open_starts: dict[tuple, list[float]] = {}
    spans: list[tuple[str, int, float, float | None, int | None]] = []
    started: list[tuple[float, str | None]] = []        # the agent's phase_start of preprocessing: (t, config)
    completed: set[str] = set()                         # configurations the agent said were complete
    agent_seen = False
    for obj in _json_lines(agent_jsonl):
        t = _num(obj.get("t"))
        event = obj.get("event")
        case = obj.get("case")
        pid = _int(obj.get("pid"))
        if t is not None and event in ("agent_start", "phase_start"):
            agent_seen = True
            if event == "phase_start" and obj.get("phase") == "preprocessing":
                started.append((t, obj.get("configuration")))
        if event == "configuration_complete" and isinstance(obj.get("configuration"), str):
            completed.add(obj["configuration"])
        if t is None or pid is None or not isinstance(case, str):
            continue
        key = (pid, case, obj.get("phase"), obj.get("configuration"))
        if event == "case_start":
            open_starts.setdefault(key, []).append(t)
        elif event in ("case_end", "case_error"):
            pending = open_starts.get(key)
            if pending:
                start = pending.pop(0)
            else:
                duration = _num(obj.get("duration_s"))
                start = t - duration if duration is not None and duration >= 0 else t
            spans.append((case, pid, start, t, _int(obj.get("peak_rss_bytes"))))
    for (pid, case, _phase, _configuration), pending in open_starts.items():
        for start in pending:
            spans.append((case, pid, start, None, None))
    cases: list[CaseSpan] = []
    for case, pid, start, end, peak in sorted(spans, key=lambda s: (s[2], s[1], s[0])):
        if peak is None and pid in rss_by_pid:
            stop = end if end is not None else math.inf
            seen = [rss for t, rss in rss_by_pid[pid] if start <= t <= stop]
            peak = max(seen) if seen else None
        cases.append(CaseSpan(case=case, pid=pid, start=start, end=end, peak_rss_bytes=peak))

    # OOM kill times: both sources, deduplicated.
    kills: list[float] = []
    for t in sorted(oom_times):
        if not kills or t - kills[-1] > _OOM_DEDUP_S:
            kills.append(t)

    if agent_seen:
        phases = [p for p in phases if not _skipped(p, cases, kills, started, completed)]

    return PlotData(samples=samples, phases=phases, cases=cases, oom_kill_times=kills,
                    limit_bytes=limit_bytes, title=title)
