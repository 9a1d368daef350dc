"""Every sentence the user reads about an outcome: the headline, phase names, what was killed, why.

Pure functions over plain values.  The report, the early OOM line, and the
Slurm and Kubernetes diagnoses all take their words from here, so one
outcome reads the same wherever it is shown.
"""
from __future__ import annotations

import signal

from runner.diagnosis.classify import Victim
from runner.errors import Outcome
from runner.units import format_bytes

PHASES = ("startup", "verify", "fingerprint", "planning", "preprocessing")
PHASE_WORDS = {
    "startup": "start-up",
    "verify": "dataset verification",
    "fingerprint": "fingerprint extraction",
    "planning": "experiment planning",
    "preprocessing": "preprocessing",
}
CASE_VERBS = {"preprocessing": "preprocessing", "fingerprint": "extracting the fingerprint of",
              "verify": "verifying"}
EARLY_SUFFIX = "(full report when nnU-Net has ended)"
ERROR_HINT = "fix the cause above; the full traceback is in the nnU-Net log"
KILLED_HINT = "run the same command again"


def headline(outcome: Outcome, prefix: str = "nnrun") -> str:
    """'nnrun: oom (out of memory)', 'nnrun: error', ... (prefix 'nnrun slurm' for a submission)."""
    return f"{prefix}: oom (out of memory)" if outcome is Outcome.OOM else f"{prefix}: {outcome.value}"


def describe_phase(phase: str | None, configuration: str | None) -> str:
    if phase is None:
        return "before nnU-Net started"
    words = PHASE_WORDS.get(phase, phase)
    if phase == "preprocessing" and configuration:
        return f"{words} {configuration}"
    return words


def during_phase(phase: str | None, configuration: str | None) -> str:
    """'during fingerprint extraction', or 'before nnU-Net started' when no phase is known."""
    if phase is None or phase == "startup":
        return "before nnU-Net started"
    return f"during {describe_phase(phase, configuration)}"


def oom_message(first: Victim | None, phase: str | None, configuration: str | None, in_flight: list[str],
                exact: bool) -> str:
    """'a worker (pid 73) was killed while preprocessing case017 (3d_fullres); 3 other cases were in flight: ...'"""
    during = during_phase(phase, configuration)
    if first is not None and first.role == "main":
        return f"the kernel OOM-killed nnU-Net's main process {during}"
    pid = f" (pid {first.pid})" if first is not None and first.pid else ""
    if first is not None and first.case:
        config = f" ({configuration})" if phase == "preprocessing" and configuration else ""
        others = [c for c in in_flight if c != first.case]
        text = (f"the kernel OOM-killed a worker{pid} while {CASE_VERBS.get(phase or '', 'processing')} "
                f"{first.case}{config}")
        if others:
            text += (f"; {len(others)} other case{'s' if len(others) > 1 else ''} "
                     f"{'were' if len(others) > 1 else 'was'} in flight: {', '.join(others)}")
        return text
    flight = ""
    if in_flight:
        flight = f" (cases in flight{'' if exact else ', inferred'}: {', '.join(in_flight)})"
    return f"the kernel OOM-killed a worker process{pid} {during}{flight}"


def early_oom_line(first: Victim, phase: str | None, configuration: str | None) -> str:
    """The OOM line printed as soon as the kill is certain, before the full report."""
    in_flight = [first.case] if first.case else []
    return (f"{headline(Outcome.OOM)}: {oom_message(first, phase, configuration, in_flight, bool(first.case))} "
            f"{EARLY_SUFFIX}")


def peak_clause(peak_anon_bytes: int | None, limit_bytes: int | None) -> str:
    if not peak_anon_bytes:
        return ""
    return f"; anonymous memory peaked at {format_bytes(peak_anon_bytes)} of the {format_bytes(limit_bytes or 0)} cap"


def ok_message(dataset_name: str, configurations: list[str] | tuple[str, ...], duration_s: float, no_pp: bool,
               peak: str) -> str:
    if no_pp:
        return f"{dataset_name}: fingerprint and plans ready in {duration_s:.1f} s (--no_pp: no case preprocessed){peak}"
    return f"{dataset_name} preprocessed ({' '.join(configurations)}) in {duration_s:.1f} s{peak}"


def shard_ok_message(shard: str, dataset_name: str, cases: int, duration_s: float, dataset_complete: bool) -> str:
    rest = ("every shard is complete: the dataset is ready" if dataset_complete else
            "cases of other shards are still pending (`nnrun merge` checks the whole dataset)")
    return f"shard {shard} of {dataset_name}: {cases} cases preprocessed in {duration_s:.1f} s; {rest}"


def enospc_detail(folder: object) -> str:
    return f"; the output disk is full (ENOSPC: No space left on device): free space in {folder}"


def shape_detail(mismatches: list[str]) -> str:
    return f"; label and image shapes differ in case {', '.join(mismatches)}"


def error_message(phase: str | None, configuration: str | None, line: str, detail: str = "") -> str:
    return f"nnU-Net failed {during_phase(phase, configuration)}: {line}{detail}"


def killed_message(phase: str | None, configuration: str | None, nnunet_returncode: int | None,
                   container_exit_code: int | None) -> str:
    how = (f"nnU-Net was killed by signal {-nnunet_returncode}"
           if nnunet_returncode is not None and nnunet_returncode < 0
           else f"the container was killed (exit code {container_exit_code})")
    return (f"{how} {during_phase(phase, configuration)}, without an OOM kill: stopped from outside "
            f"(docker kill, a scheduler or an admin?)")


def interrupted_message(signum: int, phase: str | None, configuration: str | None) -> str:
    name = signal.Signals(signum).name
    return f"interrupted by {name} {during_phase(phase, configuration)}: container stopped and removed"


def infra_message(container_exit_code: int | None, start_error: str | None) -> str:
    return (f"the container exited with code {container_exit_code} before nnU-Net ran"
            + (f": {start_error}" if start_error else ""))
