"""How much memory a run needs: the one source of every ``--mem`` nnrun prints.  Pure.

``memory_needed`` answers "what is the smallest cap under which the phases
still to run finish with one worker per pool?" from three kinds of knowledge,
best first:

1. **measured**: a case's worker peak (its VmHWM, the agent's ``case_end``
   event) in this run or in an earlier run of the same dataset with the same
   image (:mod:`runner.run.history` reads them from ``.nnrun/runs/``);
2. **lower bounds**: a process killed at the cap with one worker needed more
   than the cap (``at_least``);
3. **the estimate** (:mod:`runner.estimate.model`), from headers and the
   pre-flight read.

The parts that must fit, each on its own (one worker):

* nnU-Net's main process after its imports (the measured baseline);
* fingerprint extraction: every case's worker next to the main process, which
  holds the samples gathered so far, and the main process at the end of the
  fingerprint (it stacks 1e8 float32 samples per channel, three copies);
* preprocessing, per configuration: every case's worker next to the main
  process.

A worker's peak RSS counts the file-backed pages it shares with the main
process (torch, numpy...), which the cgroup charges once: next to the main
process a worker costs its peak less ``baseline.shared_bytes``.

The largest part, times (1 + margin), rounded up to a ``--mem`` value, is the
cap to run with.  The margin is the model's measured worst error for an
estimated part, ``MEASURED_MARGIN`` for a measured one.  The refusal before a
run (:func:`runner.run.admission.check_fits`), ``nnrun estimate``, the OOM
advice (:mod:`runner.diagnosis.advice`) and the cluster backends all call this
function, so the same data and cap always give the same ``--mem``.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from runner.estimate.model import Estimate
from runner.units import format_bytes, format_mem_arg, parse_mem

# A measured peak repeats within a few percent (same data, same image): a small margin covers the noise.
MEASURED_MARGIN = 0.10

# Keys of measured peaks: (phase, configuration or None, case id).
PeakKey = tuple[str, "str | None", str]


@dataclass(frozen=True)
class Part:
    """One thing that must fit under the cap."""

    what: str                 # words for the user: "case042 in preprocessing 3d_fullres"
    kind: str                 # "main" (imports), "main_pool" (holding the fingerprint samples), "main_end", "case"
    bytes: int                # what the cgroup is charged at its peak (no margin)
    source: str               # "estimate", "measured", "killed at the cap" or "thrashed at the cap"
    margin: float

    @property
    def with_margin(self) -> int:
        return int(self.bytes * (1.0 + self.margin))


@dataclass(frozen=True)
class MemoryNeed:
    """The smallest cap for the phases still to run, with one worker per pool."""

    binding: Part             # the largest part: the one that sets the cap
    mem_bytes: int            # binding.with_margin rounded up to a --mem value (what --mem <mem_arg> gives)
    parts: tuple[Part, ...]

    @property
    def mem_arg(self) -> str:
        return format_mem_arg(self.mem_bytes)

    @property
    def point_bytes(self) -> int:
        return self.binding.bytes

    def fits(self, cap_bytes: int) -> bool:
        """Does the point value (no margin) fit?  A cap between it and ``mem_bytes`` is worth a try."""
        return self.binding.bytes <= cap_bytes

    def reason(self) -> str:
        """One clause: what sets the figure, and the margin used, said once."""
        source = {"estimate": "predicted", "measured": "measured",
                  "killed at the cap": "at least: it was killed at that cap",
                  "thrashed at the cap": "at least: it thrashed at that cap"}.get(self.binding.source,
                                                                                  self.binding.source)
        return (f"{self.binding.what}: about {format_bytes(self.binding.bytes)} {source}, "
                f"plus a {self.binding.margin:.0%} margin")

    def to_dict(self) -> dict:
        return {"mem": self.mem_arg, "mem_bytes": self.mem_bytes, "point_bytes": self.binding.bytes,
                "margin": self.binding.margin, "binding": self.binding.what, "source": self.binding.source,
                "reason": self.reason()}


def _round_up_mem(n: int) -> int:
    """The bytes ``--mem format_mem_arg(n)`` gives, never less than ``n``."""
    return parse_mem(format_mem_arg(n))


def memory_needed(est: Estimate, *, fingerprint: bool, configurations: Iterable[str] | None,
                  measured: Mapping[PeakKey, int] | None = None,
                  at_least: Mapping[str, int] | None = None,
                  floor_source: str = "killed at the cap") -> MemoryNeed:
    """The cap the phases still to run need with one worker per pool.

    ``fingerprint``: fingerprint extraction still runs.  ``configurations``:
    the configurations still to preprocess (None: every one the estimate has).
    ``measured``: per-case worker peaks seen in this or earlier runs, keyed
    (phase, configuration or None for the fingerprint, case).  ``at_least``:
    lower bounds for parts that were killed at the cap with one worker: keys
    ``"main"`` (nnU-Net's main process), or a case id; ``floor_source`` says how the
    bound was learnt ("killed at the cap", or "thrashed at the cap").
    """
    measured = measured or {}
    at_least = at_least or {}
    b = est.baseline
    parts: list[Part] = [Part("nnU-Net's main process after its imports", "main", b.main_bytes,
                              "measured" if b.measured else "estimate", MEASURED_MARGIN if b.measured else est.margin)]

    def case_part(row: dict, base: int, where: str) -> Part:
        key = (row["phase"], row["configuration"], row["case"])
        what = f"{row['case']} in {where}"
        if key in measured:
            return Part(what, "case", base + measured[key] - b.shared_bytes, "measured", MEASURED_MARGIN)
        return Part(what, "case", base + int(row["predicted_peak_bytes"]) - b.shared_bytes, "estimate", est.margin)

    wanted = None if configurations is None else set(configurations)
    for row in est.per_case:
        if row["phase"] == "fingerprint":
            if fingerprint:
                parts.append(case_part(row, est.main_fingerprint_pool_bytes, "fingerprint extraction"))
        elif wanted is None or row["configuration"] in wanted:
            parts.append(case_part(row, b.main_bytes, f"preprocessing {row['configuration']}"))
    if fingerprint:
        parts.append(Part("nnU-Net's main process holding the fingerprint samples", "main_pool",
                          est.main_fingerprint_pool_bytes, "estimate", est.margin))
        parts.append(Part("nnU-Net's main process at the end of the fingerprint", "main_end",
                          est.main_fingerprint_peak_bytes, "estimate", est.margin))
    # A part killed at the cap with one worker needed more than that cap, whatever was predicted.
    for key, floor in at_least.items():
        label = key if key != "main" else (
            "nnU-Net with one worker" if floor_source == "thrashed at the cap" else "nnU-Net's main process")
        matching = [p for p in parts if (p.kind != "case" if key == "main" else p.what.startswith(f"{key} in "))]
        if not matching or max(p.bytes for p in matching) <= floor:
            parts.append(Part(label, "main_end" if key == "main" else "case", int(floor), floor_source,
                              est.margin))
    binding = max(parts, key=lambda p: (p.with_margin, p.bytes))
    return MemoryNeed(binding=binding, mem_bytes=_round_up_mem(binding.with_margin), parts=tuple(parts))


def mem_hint(need: MemoryNeed, host_mem_bytes: int | None) -> str:
    """The hint line of a refusal: the --mem to run with, or a larger machine."""
    if host_mem_bytes and need.mem_bytes > host_mem_bytes:
        return (f"it needs about {format_bytes(need.mem_bytes)} ({need.reason()}), more than this host's "
                f"{format_bytes(host_mem_bytes)}: use a larger machine")
    return f"run with --mem {need.mem_arg} or more: {need.reason()}"
