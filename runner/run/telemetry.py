"""The run folder's event logs, read back: per-case records and exact case attribution.

Pure functions over plain data, plus :class:`JsonlTail`, which follows a JSON
lines file that another process appends to (the supervisor's ``events.jsonl``
and the agent's ``agent.jsonl`` live on the run folder, mounted into the
container).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from runner.diagnosis.classify import Victim
from runner.rundir import parse_jsonl


@dataclass(frozen=True)
class CaseRecord:
    """One case as one worker processed it, in one phase."""

    case: str
    phase: str | None
    configuration: str | None
    pid: int
    start: float
    end: float | None              # None: it never finished
    peak_rss_bytes: int | None
    duration_s: float | None
    status: str                    # "done", "error" or "unfinished"
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def case_records(events: list[dict]) -> list[CaseRecord]:
    """Pair the agent's case_start with its case_end / case_error, per worker pid."""
    open_cases: dict[tuple, dict] = {}
    records: list[CaseRecord] = []
    for e in events:
        kind = e.get("event")
        if kind not in ("case_start", "case_end", "case_error"):
            continue
        try:
            key = (int(e["pid"]), str(e["case"]), e.get("phase"), e.get("configuration"))
            t = float(e["t"])
        except (KeyError, TypeError, ValueError):
            continue
        if kind == "case_start":
            open_cases[key] = e
            continue
        start = open_cases.pop(key, None)
        records.append(CaseRecord(
            case=key[1], phase=key[2], configuration=key[3], pid=key[0],
            start=float(start["t"]) if start else t - float(e.get("duration_s") or 0.0), end=t,
            peak_rss_bytes=e.get("peak_rss_bytes"), duration_s=e.get("duration_s"),
            status="done" if kind == "case_end" else "error", error=e.get("error")))
    for key, start in open_cases.items():
        records.append(CaseRecord(case=key[1], phase=key[2], configuration=key[3], pid=key[0],
                                  start=float(start["t"]), end=None, peak_rss_bytes=None, duration_s=None,
                                  status="unfinished"))
    return sorted(records, key=lambda r: (r.start, r.pid))


def unfinished(records: list[CaseRecord]) -> list[CaseRecord]:
    return [r for r in records if r.status == "unfinished"]


def case_held_by(records: list[CaseRecord], pid: int | None, at: float | None = None) -> str | None:
    """The case worker ``pid`` was processing (at time ``at``, or when it last started one and never ended)."""
    if pid is None:
        return None
    mine = [r for r in records if r.pid == pid]
    if at is not None:
        held = [r for r in mine if r.start <= at and (r.end is None or r.end > at)]
        if held:
            return held[-1].case
    open_ones = [r for r in mine if r.status == "unfinished"]
    return open_ones[-1].case if open_ones else None


def case_finished_last(records: list[CaseRecord], pid: int | None, at: float | None = None) -> str | None:
    """The case worker ``pid`` finished last (before time ``at``): what a worker killed between cases held."""
    done = [r for r in records if r.pid == pid and pid is not None and r.end is not None
            and (at is None or r.end <= at)]
    return max(done, key=lambda r: r.end or 0.0).case if done else None


def with_cases(victim: Victim, records: list[CaseRecord]) -> Victim:
    """A worker victim with the case it held at the kill, or else the case it had just finished."""
    if victim.role != "worker":
        return victim
    held = case_held_by(records, victim.pid, victim.t)
    return replace(victim, case=held, last_case=None if held else case_finished_last(records, victim.pid, victim.t))


class JsonlTail:
    """Reads the whole lines appended to a file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offset = 0
        self._pending = b""

    def read_new(self) -> list[dict]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except OSError:
            return []
        self._offset += len(chunk)
        data = self._pending + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._pending = data
            return []
        self._pending = data[cut + 1:]
        return parse_jsonl(data[:cut].decode("utf-8", "replace"))
