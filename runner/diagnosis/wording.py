"""Every sentence the user reads about an outcome: the headline, phase names, what was killed, why.

Pure functions over plain values.  The report, the early OOM line, and the
Slurm and Kubernetes diagnoses all take their words from here, so one
outcome reads the same wherever it is shown.
"""
from __future__ import annotations

import signal

from runner.diagnosis.classify import Death, Victim
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
    between = (f" between two cases (it had just finished {first.last_case} and held its memory still)"
               if first is not None and first.last_case else "")
    return f"the kernel OOM-killed a worker process{pid}{between} {during}{flight}"


def thrash_message(thrashing, phase: str | None, configuration: str | None, in_flight: list[str]) -> str:
    """'nnU-Net thrashed at the 1 GiB cap for 10 s during fingerprint extraction (...): nnrun ended it ...'"""
    during = "while it started (its imports)" if phase in (None, "startup") else during_phase(phase, configuration)
    evidence = []
    if thrashing.reread_rate is not None:
        evidence.append(f"{thrashing.reread_rate:.0f} pages read back a second")
    if thrashing.stall_share is not None:
        evidence.append(f"all tasks stalled on memory {thrashing.stall_share:.0%} of the time")
    flight = f"; cases in flight: {', '.join(in_flight)}" if in_flight else ""
    return (f"nnU-Net thrashed at the {format_bytes(thrashing.limit_bytes)} cap for {thrashing.seconds:.0f} s "
            f"{during} (memory stayed at the cap while the kernel re-read evicted pages: "
            f"{'; '.join(evidence) or 'no progress'}); nnrun ended it rather than wait minutes for an OOM "
            f"kill{flight}")


def stopped_after_oom_clause(signum: int) -> str:
    """nnrun was signalled after the kill: the job's manager reacting to it (a systemd unit's OOMPolicy=stop)."""
    name = signal.Signals(signum).name if signum in {int(s) for s in signal.Signals} else f"signal {signum}"
    return (f"; then nnrun got {name} (the job's manager stopped it after the kill, as a systemd scope's "
            f"default OOMPolicy=stop does)")


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
               peak: str, skipped: list[str] | tuple[str, ...] = ()) -> str:
    """``configurations``: those preprocessed; ``skipped``: those asked for that the plans do not have."""
    if no_pp:
        return f"{dataset_name}: fingerprint and plans ready in {duration_s:.1f} s (--no_pp: no case preprocessed){peak}"
    skip = f"; {' '.join(skipped)} skipped: not in the plans" if skipped else ""
    if not configurations:
        return (f"{dataset_name}: nothing preprocessed, the plans have none of the configurations asked for "
                f"({' '.join(skipped)}); fingerprint and plans ready in {duration_s:.1f} s{peak}")
    return f"{dataset_name} preprocessed ({' '.join(configurations)}{skip}) in {duration_s:.1f} s{peak}"


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


# -- deaths that are not OOM kills ------------------------------------------------------------------

DEATH_REASONS = ("crash", "shm", "killed", "exit", "exception")
SIGNAL_WORDS = {
    "SIGSEGV": "segmentation fault",
    "SIGBUS": "bus error",
    "SIGABRT": "abort",
    "SIGFPE": "floating-point exception",
    "SIGILL": "illegal instruction",
    "SIGKILL": "kill",
    "SIGTERM": "termination request",
    "SIGINT": "interrupt",
    "SIGHUP": "hang-up",
}


def signal_words(name: str | None) -> str:
    """'SIGSEGV (segmentation fault)'."""
    if not name:
        return "an unknown signal"
    words = SIGNAL_WORDS.get(name)
    return f"{name} ({words})" if words else name


def _who(death: Death) -> str:
    pid = f" (pid {death.pid})" if death.pid else ""
    return f"nnU-Net's main process{pid}" if death.role == "main" else f"a worker{pid}"


def _where(death: Death) -> str:
    """'while preprocessing case003 (3d_fullres)' or 'during fingerprint extraction'."""
    if death.case:
        config = f" ({death.configuration})" if death.phase == "preprocessing" and death.configuration else ""
        return f"while {CASE_VERBS.get(death.phase or '', 'processing')} {death.case}{config}"
    return during_phase(death.phase, death.configuration)


def death_message(death: Death, reason: str | None, peak_shm_bytes: int | None = None,
                  shm_size_bytes: int | None = None) -> str:
    """One sentence: who died of what, holding which case, and the likeliest cause with its evidence."""
    who, where = _who(death), _where(death)
    if reason == "exception" or (reason == "shm" and death.error):
        text = f"{who} raised {(death.error or '').strip()} {where}"
        return text + (": shared memory (/dev/shm) was full" if reason == "shm" else "")
    if reason == "killed":
        how = f"was killed by {signal_words(death.signal_name)}" if death.signal_name else "vanished"
        return (f"{who} {how} {where}, from outside: the cgroup's OOM-kill counter did not move, so not "
                f"the kernel's OOM killer (a scheduler, an admin, docker kill?)")
    if reason == "exit":
        return f"{who} exited with status {death.exit_status} {where}"
    text = f"{who} died of {signal_words(death.signal_name)} {where}"
    if reason == "shm":
        used = (f" ({format_bytes(peak_shm_bytes)} of {format_bytes(shm_size_bytes)} in use)"
                if peak_shm_bytes and shm_size_bytes else "")
        return f"{text}: shared memory (/dev/shm) was full{used}"
    if death.library and death.library != "nnrun":
        text += f": a native crash in {death.library}"
    elif death.frame:
        text += ": a native crash"
    if death.frame:
        text += f" ({death.frame})"
    return text


def early_death_line(death: Death, reason: str) -> str:
    """The line printed as soon as a crash is known, before the full report."""
    return f"{headline(Outcome.ERROR)}: {death_message(death, reason)} {EARLY_SUFFIX}"


def crash_advice(death: Death) -> str:
    case = f"{death.case} " if death.case else "the unfinished cases "
    return (f"rerun with one worker (complete cases are kept): if {case}crashes again alone, the crash is in "
            f"its data; if not, it was flaky (--retry 1 does this for you)")


def crash_retry_sentence(first: Death, verdict: str) -> str:
    """What rerunning a crash with one worker showed: verdict 'flaky' or 'data-dependent'."""
    case = first.case or "a case"
    if verdict == "data-dependent":
        return (f"it crashed again on {case} with one worker: the crash depends on {case}'s data "
                f"(check that file, or report it with the frame above)")
    return (f"a worker had died of {signal_words(first.signal_name)} on {case}; the rerun with one worker "
            f"completed: the crash was flaky, not in {case}'s data")


KILLED_WORKER_HINT = "run the same command again; if workers keep being killed, look for what kills them on this host"
EXCEPTION_HINT = "fix the cause above in that case's files; the full traceback is in the nnU-Net log"
