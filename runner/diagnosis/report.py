"""The result of ``nnrun preprocess`` as plain data, and its two renderings.

:class:`RunReport` is what every outcome produces, ``bad_input`` and ``infra``
included.  :func:`to_json` gives the documented JSON object
(``runner/schema/report.schema.json``); :func:`render_human` the report for
stderr.  Both are pure: the CLI is the only place that prints.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from importlib import resources

from runner import __version__
from runner.diagnosis.wording import DEATH_REASONS, describe_phase, headline, signal_words
from runner.errors import Outcome, exit_code_for
from runner.units import format_bytes

SCHEMA_VERSION = 5      # 2: signal, signal_name, crash_frame, crash_library, shm_size_bytes, crash_retry;
                        # 3: configurations_skipped, and configurations lists only what nnU-Net preprocessed;
                        # 4: memory_needed, thrashing, oom_source "thrashing"; 5: victims[].last_case


@dataclass
class RunReport:
    outcome: Outcome
    message: str
    phase: str | None = None
    configuration: str | None = None
    victim: str | None = None
    victims: list[dict] = field(default_factory=list)
    victim_case: str | None = None
    oom_kills: int | None = None
    oom_source: str | None = None
    limit_bytes: int | None = None
    peak_anon_bytes: int | None = None
    peak_usage_bytes: int | None = None
    cases_in_flight: list[str] = field(default_factory=list)
    cases_exact: bool = False
    recommendation: str | None = None
    recommendation_argv: list[str] | None = None
    recommendation_text: str | None = None
    memory_needed: dict | None = None     # runner.estimate.need.MemoryNeed.to_dict(): what the --mem advised rests on
    thrashing: dict | None = None         # oom_source "thrashing": runner.rundir.Thrashing (seconds, reread_rate, ...)
    container_exit_code: int | None = None
    duration_s: float | None = None
    log_path: str | None = None
    interrupt_signal: int | None = None
    # context
    dataset: str | None = None
    configurations: list[str] | None = None              # preprocessed (ok); asked for minus skipped (failed)
    # asked for but skipped by nnU-Net, its plans having none: [{configuration, reason}]
    configurations_skipped: list[dict] = field(default_factory=list)
    workers: dict | None = None
    nnunet_argv: list[str] | None = None
    image: str | None = None
    image_id: str | None = None
    run_id: str | None = None
    run_dir: str | None = None
    engine_oom_killed: bool | None = None
    engine_oom_events: int | None = None
    cgroup_reader: str | None = None
    removed_outputs: list[str] = field(default_factory=list)
    error_detail: str | None = None
    hint: str | None = None
    cases: list[dict] = field(default_factory=list)     # per case and phase: pid, peak RSS, duration
    monitor: dict | None = None                          # the host sampler: samples, CPU cost
    attempts: list[dict] = field(default_factory=list)   # one per attempt (--retry), the last is this one
    reason: str | None = None                            # e.g. "ENOSPC" for a full output disk
    peak_shm_bytes: int | None = None                    # peak use of /dev/shm in the container
    plot_path: str | None = None
    plot_error: str | None = None
    shard: str | None = None                             # "K/N" for a --shard run
    shard_cases: list[str] | None = None                 # the cases of that shard
    dataset_complete: bool | None = None                 # a shard run: every shard's cases are complete
    runtime: str | None = None                           # docker | podman | host
    # A process that died of something else than the OOM killer (reason crash, shm, killed, exit, exception).
    signal: int | None = None                            # the signal it died of
    signal_name: str | None = None                       # SIGSEGV, SIGBUS, SIGABRT, SIGKILL, ...
    crash_frame: str | None = None                       # faulthandler's innermost Python frame
    crash_library: str | None = None                     # the package of that frame (blosc2, numpy, ...)
    shm_size_bytes: int | None = None                    # the size of /dev/shm in the container
    crash_retry: str | None = None                       # --retry after a crash: "flaky" or "data-dependent"

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.outcome, self.interrupt_signal)


def to_json(report: RunReport) -> dict:
    # Shallow: every field holds plain JSON values already (dataclasses.asdict's deep copy of the per-case
    # records took 0.04 s a call on a 500-case run, and a run serializes its report three times).
    data = {f.name: getattr(report, f.name) for f in fields(report)}
    data.pop("recommendation_text")
    data.pop("interrupt_signal")
    data["outcome"] = report.outcome.value
    return {"schema_version": SCHEMA_VERSION, "nnrun_version": __version__,
            "exit_code": report.exit_code, **data}


def dumps(report: RunReport) -> str:
    return json.dumps(to_json(report), sort_keys=False)


def load_report(run_dir) -> dict:
    """The report.json of a run folder (BadInputError when there is none)."""
    from pathlib import Path

    from runner.errors import BadInputError

    path = Path(run_dir) / "report.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInputError(f"no report.json in {run_dir}: is it a run folder "
                            f"(<preprocessed>/DatasetXXX_Name/.nnrun/runs/<run id>)?") from None
    except (OSError, ValueError) as err:
        raise BadInputError(f"cannot read {path}: {err}") from None


def report_from_json(data: dict) -> RunReport:
    """A RunReport back from its JSON (fields this version does not know are ignored)."""
    known = {f.name for f in fields(RunReport)}
    values = {k: v for k, v in data.items() if k in known}
    values["outcome"] = Outcome(data["outcome"])
    report = RunReport(**values)
    if report.outcome is Outcome.INTERRUPTED:
        report.interrupt_signal = int(data.get("exit_code", 130)) - 128
    return report


def load_schema() -> dict:
    return json.loads(resources.files("runner").joinpath("schema/report.schema.json").read_text())


def _pct(part: int | None, whole: int | None) -> str:
    if not part or not whole:
        return ""
    return f" ({100 * part / whole:.0f} % of the cap)"


def _died_line(report: RunReport) -> str | None:
    """'a worker (pid 73 in the container), case case003, SIGSEGV (segmentation fault)' for a non-OOM death."""
    if report.outcome is Outcome.OOM or not report.victims or report.reason not in DEATH_REASONS \
            or report.reason == "exception":          # it raised and lived on: the headline says so
        return None
    v = report.victims[0]
    who = "nnU-Net's main process" if v["role"] == "main" else "a worker process"
    pid = f" (pid {v['pid']} in the container)" if v.get("pid") else ""
    case = f", case {v['case']}" if v.get("case") else ""
    how = f", {signal_words(report.signal_name)}" if report.signal_name else ""
    return f"{who}{pid}{case}{how}"


def render_human(report: RunReport) -> str:
    """The report for stderr: a headline, then the facts behind it, then what to do."""
    o = report.outcome
    lines: list[str] = []
    if o in (Outcome.BAD_INPUT, Outcome.INFRA) and report.log_path is None:
        # Nothing ran: one line says it all (and the command that fits, for a cap too small).
        nxt = f"\n  next:         {report.recommendation}" if report.recommendation else ""
        return f"nnrun: {o.value}: {report.message}{nxt}"
    head = headline(o)
    lines.append(f"{head}: {report.message}")
    if o is not Outcome.OK:
        lines.append(f"  phase:        {describe_phase(report.phase, report.configuration)}")
    if o is Outcome.OOM:
        for v in report.victims:
            who = "nnU-Net's main process" if v["role"] == "main" else "a worker process"
            pid = f" (pid {v['pid']} in the container)" if v.get("pid") else ""
            case = (f", case {v['case']}" if v.get("case") else
                    f", between cases (just finished {v['last_case']})" if v.get("last_case") else "")
            lines.append(f"  killed:       {who}{pid}{case}")
        if report.thrashing:
            t = report.thrashing
            rate = f"{t['reread_rate']:.0f} pages read back/s" if t.get("reread_rate") is not None else ""
            stall = f"stalled {t['stall_share']:.0%}" if t.get("stall_share") is not None else ""
            lines.append(f"  thrashing:    {t['seconds']:.0f} s at the cap ({', '.join(x for x in (rate, stall) if x)}); "
                         "ended by nnrun")
        if report.oom_source != "thrashing" or report.oom_kills:
            lines.append(f"  OOM kills:    {report.oom_kills} (source: {report.oom_source} counter)"
                         if report.oom_source == "cgroup" else
                         f"  OOM kills:    {report.oom_kills} (source: {report.oom_source}; cgroup counter unreadable)")
        if report.cases_in_flight:
            exact = "" if report.cases_exact else " (inferred from finished outputs)"
            lines.append(f"  in flight:    {', '.join(report.cases_in_flight)}{exact}")
    if report.limit_bytes:
        lines.append(f"  memory cap:   {format_bytes(report.limit_bytes)} (no swap)")
    if report.peak_anon_bytes:
        lines.append(f"  peak anon:    {format_bytes(report.peak_anon_bytes)}"
                     f"{_pct(report.peak_anon_bytes, report.limit_bytes)}"
                     + (f"; with page cache {format_bytes(report.peak_usage_bytes)}"
                        if report.peak_usage_bytes else ""))
    skipped = {s.get("configuration") for s in report.configurations_skipped}
    if report.workers:
        np_text = " ".join(f"{c}={n}" for c, n in (report.workers.get("np") or {}).items() if c not in skipped)
        lines.append(f"  workers:      -npfp {report.workers.get('npfp')}"
                     + (f"; -np {np_text}" if np_text else ""))
    for s in report.configurations_skipped:
        lines.append(f"  skipped:      {s.get('configuration')}: {s.get('reason')}")
    died = _died_line(report)
    if died:
        lines.append(f"  died:         {died}")
    if report.crash_frame:
        lines.append(f"  frame:        {report.crash_frame}")
    if report.reason == "shm" and report.shm_size_bytes:
        used, size = format_bytes(report.peak_shm_bytes or 0), format_bytes(report.shm_size_bytes)
        lines.append(f"  /dev/shm:     {used} of {size} in use")
    if report.error_detail and o is not Outcome.OOM:
        # nnU-Net's own last words, quoted: never the headline ("6 feet under" says nothing of the cause).
        lines.append(f"  nnU-Net said: \"{report.error_detail}\"")
    if report.removed_outputs:
        lines.append(f"  removed:      {len(report.removed_outputs)} half-written output(s) of the failed phase")
    if report.duration_s is not None:
        lines.append(f"  duration:     {report.duration_s:.1f} s")
    if report.log_path:
        lines.append(f"  nnU-Net log:  {report.log_path}")
    if report.recommendation_text:
        lines.append(f"  advice:       {report.recommendation_text}")
    if report.recommendation:
        lines.append(f"  next:         {report.recommendation}")
    elif report.hint:
        lines.append(f"  next:         {report.hint}")
    return "\n".join(lines)
