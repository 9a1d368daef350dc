"""Thrashing at the cap: memory stays at the limit while the kernel evicts and re-reads pages, and
nnU-Net makes no progress.  Pure: the supervisor feeds it one cgroup reading per poll.

With no swap, a cgroup whose anonymous memory nearly fills the cap is not OOM-killed while the kernel
can still reclaim file pages: it evicts the code and libraries the processes run from, faults them back
in, evicts them again.  The run then crawls for minutes before the kill comes, or never ends (measured:
284 s of silence before the OOM kill of a main process whose imports did not fit).  Two signs, read
together, tell this from a good run that merely sits at the cap with page cache:

* **usage at the cap** (within ``NEAR_CAP_FRACTION``): the cgroup is reclaiming;
* **a steady stream of pages read back** (memory.stat ``workingset_refault_file``, v1 and v2: a page
  read in again soon after it was evicted; on kernels without that counter, ``pgmajfault``).  A good run
  at the cap holds page cache too, but reads each file once per phase and only a cold start maps
  libraries in, in a burst of seconds, not for the whole window.  On cgroup v2 the PSI ``full`` stall
  share (memory.pressure) says the same directly and is used when present.

Both must hold for ``WINDOW_S`` seconds, in each half of the window, before the verdict: a single burst
does not end a run.
"""
from __future__ import annotations

from dataclasses import dataclass

from runner.rundir import Thrashing

WINDOW_S = 10.0                    # thrashing this long: end the run (the verdict comes well inside 30 s)
NEAR_CAP_FRACTION = 0.03           # usage within 3 % of the cap (and at least NEAR_CAP_MIN_BYTES)
NEAR_CAP_MIN_BYTES = 8 << 20
MIN_REREAD_RATE = 1000.0           # pages read back a second (4 MB/s), in each half of the window
MIN_STALL_SHARE = 0.25             # v2: share of the time every task of the cgroup stalled on memory


@dataclass(frozen=True)
class Reading:
    """One poll's cgroup counters (cumulative counters as the kernel gives them)."""

    t: float
    usage_bytes: int | None
    limit_bytes: int | None
    rereads: int | None               # pages read back so far: refaults, or major faults
    pressure_full_us: int | None = None


def near_cap(reading: Reading) -> bool:
    if reading.usage_bytes is None or not reading.limit_bytes:
        return False
    slack = max(NEAR_CAP_FRACTION * reading.limit_bytes, NEAR_CAP_MIN_BYTES)
    return reading.usage_bytes >= reading.limit_bytes - slack


def _rate(start: Reading, end: Reading, field: str) -> float | None:
    a, b = getattr(start, field), getattr(end, field)
    span = end.t - start.t
    if a is None or b is None or span <= 0 or b < a:
        return None                     # not on this kernel, or a counter that went back (a new cgroup)
    return (b - a) / span


class ThrashWatch:
    """Feed it readings in time order; ``observe`` returns a :class:`Thrashing` once the cgroup has sat
    at the cap with a steady stream of pages read back (or memory stall) for ``window_s``, else None."""

    def __init__(self, window_s: float = WINDOW_S, min_reread_rate: float = MIN_REREAD_RATE,
                 min_stall_share: float = MIN_STALL_SHARE) -> None:
        self.window_s = window_s
        self.min_reread_rate = min_reread_rate
        self.min_stall_share = min_stall_share
        self._stretch: list[Reading] = []      # the readings of the current stretch at the cap
        # What the watch saw, for the run folder (how far a run that was not ended stayed from the rule):
        self.longest_at_cap_s = 0.0
        self.peak_reread_rate: float | None = None     # the highest "slower half" rate over a whole window

    def observe(self, reading: Reading) -> Thrashing | None:
        if not near_cap(reading):
            self._stretch.clear()
            return None
        self._stretch.append(reading)
        since = self._stretch[0].t
        self.longest_at_cap_s = max(self.longest_at_cap_s, round(reading.t - since, 1))
        if reading.t - since < self.window_s:
            return None
        # Keep one reading at or before the window's start, so the window is measured whole.
        start_t = reading.t - self.window_s
        while len(self._stretch) > 2 and self._stretch[1].t <= start_t:
            self._stretch.pop(0)
        window = self._stretch
        first, last = window[0], window[-1]
        middle = min(window, key=lambda r: abs(r.t - (start_t + self.window_s / 2)))
        halves = [(first, middle), (middle, last)]
        reread_halves = [_rate(a, b, "rereads") for a, b in halves]
        stall_halves = [_rate(a, b, "pressure_full_us") for a, b in halves]
        if all(r is not None for r in reread_halves):
            slower = min(r for r in reread_halves if r is not None)
            self.peak_reread_rate = max(self.peak_reread_rate or 0.0, round(slower, 1))
        rereading = all(r is not None and r >= self.min_reread_rate for r in reread_halves)
        stalled = all(s is not None and s / 1e6 >= self.min_stall_share for s in stall_halves)
        if not (rereading or stalled):
            return None
        reread_rate = _rate(first, last, "rereads")
        stall = _rate(first, last, "pressure_full_us")
        return Thrashing(since=since, seconds=round(reading.t - since, 1),
                         reread_rate=None if reread_rate is None else round(reread_rate, 1),
                         stall_share=None if stall is None else round(stall / 1e6, 3),
                         limit_bytes=int(reading.limit_bytes or 0))

    def summary(self) -> dict:
        return {"longest_at_cap_s": self.longest_at_cap_s, "peak_reread_rate": self.peak_reread_rate}
