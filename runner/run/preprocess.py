"""``nnrun preprocess``: pre-flight, one container run under a memory cap, diagnosis.

This module orchestrates; it never prints.  Progress goes to a
:class:`ProgressSink` the CLI provides, and the result is a
:class:`~runner.diagnosis.report.RunReport`.  Expected failures before the container
starts are raised as :class:`~runner.errors.NnrunError`.
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from runner.configurations import preprocessed_and_skipped
from runner.dataset import RawDataset
from runner.diagnosis import wording
from runner.diagnosis.advice import recommend
from runner.diagnosis.classify import Death, Verdict, classify, shm_was_full
from runner.diagnosis.facts import RunFacts, highest
from runner.diagnosis.report import RunReport, to_json
from runner.engines.base import Engine
from runner.errors import BadInputError, NnrunError, NotEnoughMemoryError, Outcome, RunInterrupted
from runner.incontainer.preprocess import STAGING, TMP_MARK
from runner.options import DEFAULT_CONFIGURATIONS, PreprocessOptions, nnrun_argv, nnunet_argv
from runner.run.contract import RUN_LABEL, build_spec, container_user, hand_over
from runner.run.locks import acquire as acquire_locks
from runner.run.locks import owner_info, scope_for_run
from runner.run.manifest import attempt_summary, build_manifest, iso_time
from runner.run.memory import need_after_oom, predicted_case_bytes
from runner.run.monitor import CgroupMonitor, MonitorSummary
from runner.run.outputs import cases_in_flight, incomplete_outputs, new_run_dir, remove_paths
from runner.run.postmortem import facts_from_run_folder
from runner.run.preflight import (
    check_dataset_files,
    check_output_writable,
    dataset_complete,
    preflight,
    read_plans,
    shape_mismatches,
    shard_dataset,
)
from runner.run.settings import NullSink, ProgressSink, RunSettings
from runner.run.telemetry import JsonlTail, with_cases
from runner.rundir import (
    ACTIVE_FILE,
    AGENT_EVENTS_FILE,
    EVENTS_FILE,
    HOST_ACK_FILE,
    MANIFEST_FILE,
    NNRUN_DIR,
    NNUNET_LOG,
    REPORT_FILE,
    SCHEDULE_FILE,
    STATUS_FILE,
    TIMELINE_FILE,
    WARM_FILE,
    SupervisorStatus,
    read_status,
    remove_empty_fault_files,
    try_write_json,
)
from runner.units import format_bytes, format_mem_arg, format_mem_arg_at_most, parse_mem

STOP_TIMEOUT_S = 10
# Words of numpy's errors when an image and its label differ in shape (broadcast, boolean index, ...).
SHAPE_WORDS = ("shape", "broadcast", "boolean index", "dimension")


class Preprocess:
    """One ``nnrun preprocess`` run."""

    def __init__(self, opts: PreprocessOptions, settings: RunSettings, engine_factory: Callable[[], Engine],
                 sink: ProgressSink | None = None) -> None:
        self.opts = opts
        self.settings = settings
        self.engine_factory = engine_factory
        self.sink = sink or NullSink()
        self.container_id: str | None = None
        self.engine: Engine | None = None
        self._container_done = threading.Event()
        self.recovered: list[str] = []
        self._log_tail = b""                # the container's last output (the supervisor's fallback status)
        self.last_recommendation = None
        self.estimate = None                     # the estimate (None: none could be made)
        self.earlier_peaks: dict = {}            # per-case peaks measured by earlier runs (runner.run.history)
        self.fingerprint_needed = True
        self.schedule_note: str | None = None
        self.shard_cases: list[str] = []        # --shard: this shard's cases (from the shared map)
        self.last_death: Death | None = None     # the last attempt's non-OOM death
        self.first_crash: Death | None = None    # the crash that --retry reran with one worker
        # --retry: 2 when nnrun chose the worker counts, else only what the user asked for.
        self.retries = settings.retries if settings.retries is not None else (0 if settings.workers_pinned else 2)

    def _estimate(self, dataset: RawDataset, preprocessed_dataset: Path, mem_bytes: int, info,
                  choose: bool) -> None:
        """Estimate per-case peaks (headers only), refuse a cap that cannot hold the run, and (``choose``)
        let nnrun pick the worker counts / admission plan.

        Pinned workers (``choose`` False) are refused only when the cap cannot hold nnU-Net's main process
        (its imports, or the fingerprint samples it gathers): a worker's case may still be worth a try.
        """
        from runner.estimate.baseline import default_cache_dir, measure_baseline
        from runner.run.admission import check_fits, resolve_workers
        from runner.run.memory import run_estimate

        settings = self.settings
        self.sink.stage("estimating per-case memory from the image headers")
        try:
            baseline = measure_baseline(self.engine_factory, settings.image, default_cache_dir())
            est, self.earlier_peaks = run_estimate(dataset, preprocessed_dataset, self.opts, mem_bytes, baseline)
        except Exception as err:  # noqa: BLE001 - with pinned workers the estimate is advice only
            if not choose:
                return         # the user's worker counts run as they are, with the old advice
            if not isinstance(err, (NnrunError, OSError, ValueError, KeyError, RuntimeError)):
                raise
            # No estimate (e.g. the baseline probe failed): nnU-Net's own defaults.
            self.schedule_note = f"no estimate ({err}); using nnU-Net's fixed worker counts"
            self.sink.stage(self.schedule_note)
            self.settings = replace(settings, schedule="fixed", np_auto=False, npfp_auto=False)
            return
        self.fingerprint_needed = self.opts.clean or not (preprocessed_dataset / "dataset_fingerprint.json").is_file()
        # Under --runtime host the "host memory" is the job's limit, which --mem cannot exceed anyway.
        host_mem = info.mem_total_bytes if info.name != "host" else None
        try:
            check_fits(est, host_mem, self.fingerprint_needed, preprocessing=not self.opts.no_pp,
                       measured=self.earlier_peaks, main_only=not choose)
        except NotEnoughMemoryError as err:
            if err.mem_arg:
                err.recommendation_argv = nnrun_argv(self.opts, err.mem_arg, settings.passthrough_argv)
            raise
        self.estimate = est
        if not choose:
            return
        self.opts = resolve_workers(self.opts, est, settings.np_auto, settings.npfp_auto, settings.schedule,
                                    measured=self.earlier_peaks)
        chosen = self.opts.workers_per_configuration()
        self.sink.stage(f"workers: -npfp {self.opts.npfp}; " + ", ".join(f"{c} {n}" for c, n in chosen.items())
                        + (" (memory-aware admission)" if settings.schedule == "memory" else ""))

    def _shard_cases(self, dataset: RawDataset, preprocessed_dataset: Path, mem_bytes: int) -> RawDataset:
        """Read (or make) the shared case -> shard map and return the dataset restricted to this shard."""
        from runner.shards import ShardError, header_weights, load_or_create, map_path

        shard = self.settings.shard
        case_ids = sorted(c.case_id for c in dataset.cases)

        def weights() -> tuple[dict[str, int], str]:
            predicted = predicted_case_bytes(dataset, preprocessed_dataset, self.opts, mem_bytes)
            if predicted:
                return predicted, "predicted_memory"
            return header_weights({c.case_id: list(c.images) for c in dataset.cases}), "voxels"

        path = map_path(preprocessed_dataset, self.opts.plans_name)
        try:
            shard_map = load_or_create(path, shard.count, case_ids, weights, self.opts.plans_name)
        except ShardError as err:
            raise BadInputError(str(err)) from None
        except OSError as err:
            raise BadInputError(f"cannot write the shard map {path}: {err.strerror}") from None
        mine = [c for c, k in shard_map["assignment"].items() if int(k) == shard.index]
        self.shard_cases = sorted(mine)
        self.sink.stage(f"shard {shard}: {len(mine)} of {len(case_ids)} cases "
                        f"(map {path}, balanced by {shard_map.get('balanced_by')})")
        return shard_dataset(dataset, mine)

    def _own_leftovers(self, paths: list[Path]) -> list[Path]:
        """Other shards may be writing into the same folders: only this shard's cases' temporary files."""
        ending = self.full_dataset.file_ending
        mine = tuple(f"{c}{ending}{TMP_MARK}" for c in self.shard_cases)
        return [p for p in paths if p.name.startswith(mine)]

    def _judge_crash_retry(self, report: RunReport) -> None:
        """After the crash rerun: the same case crashing again alone is data-dependent, anything else flaky."""
        first = self.first_crash
        assert first is not None
        again = report.reason == "crash" and self.last_death is not None and (
            self.last_death.case == first.case or first.case is None)
        if report.outcome is Outcome.OK or (report.reason == "crash" and not again):
            report.crash_retry = "flaky"
        elif again:
            report.crash_retry = "data-dependent"
        else:
            return
        report.message += "; " + wording.crash_retry_sentence(first, report.crash_retry)

    def _new_attempt(self) -> None:
        self._log_tail = b""
        self.container_id = None
        self._container_done = threading.Event()
        self.recovered = []
        self.last_recommendation = None

    def _retry_options(self, report: RunReport) -> PreprocessOptions | None:
        """The options of the next attempt: after an OOM fewer workers, never more memory; after a crash,
        once, every pool at one worker (does the same case crash again alone?)."""
        if report.reason == "crash" and self.first_crash is None and self.last_death is not None:
            self.first_crash = self.last_death
            return self.opts.with_workers(np=1, npfp=1)      # every pool at one worker
        rec = self.last_recommendation
        if report.interrupt_signal is not None:
            return None       # nnrun itself is being stopped (e.g. systemd's OOMPolicy=stop after the kill)
        if report.outcome is not Outcome.OOM or rec is None or rec.options is None or rec.mem_bytes is not None:
            return None
        return rec.options if rec.options != self.opts else None

    def run(self) -> RunReport:
        opts, settings, sink = self.opts, self.settings, self.sink
        mem_bytes, dataset, preprocessed_root = preflight(opts, settings, sink)
        preprocessed_dataset = preprocessed_root / dataset.name
        check_output_writable(preprocessed_dataset)      # before Docker: nothing to connect for a bad folder
        sink.stage("connecting to the container engine")
        engine = self.engine = self.engine_factory()
        info = engine.info()
        if info.mem_total_bytes and mem_bytes > info.mem_total_bytes:
            where = ("this job's memory limit" if info.name == "host"
                     else f"the {'Podman' if info.name == 'podman' else 'Docker'} host's memory")
            raise BadInputError(f"--mem {settings.mem} is more than {where} "
                                f"({format_bytes(info.mem_total_bytes)})",
                                hint=f"give --mem {format_mem_arg_at_most(info.mem_total_bytes)} or less")
        if info.name == "host" and info.mem_total_bytes and mem_bytes < info.mem_total_bytes:
            sink.stage(f"--runtime host: the cap is this job's limit, {format_bytes(info.mem_total_bytes)}; "
                       f"--mem {settings.mem} is used for the estimate only")
        image = engine.image(settings.image)

        self.full_dataset = dataset
        if settings.shard is not None:
            dataset = self._shard_cases(dataset, preprocessed_dataset, mem_bytes)
            if not settings.skip_file_check:
                check_dataset_files(dataset, settings, sink)
        self._estimate(dataset, preprocessed_dataset, mem_bytes, info,
                       choose=settings.schedule == "memory" or settings.np_auto or settings.npfp_auto)
        opts, settings = self.opts, self.settings
        try:
            preprocessed_dataset.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BadInputError(f"cannot create the output folder {preprocessed_dataset}: {err.strerror}",
                                hint="check --preprocessed and its owner and permissions") from None
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        # A second run writing the same outputs must not start (exit 2, naming the first).
        shard = settings.shard
        locks = acquire_locks(preprocessed_dataset,
                              scope_for_run(opts.configurations, opts.no_pp,
                                            (shard.index + 1, shard.count) if shard else None),
                              owner_info(run_id))
        # One marker per shard: shards of the same dataset run at the same time.
        active = preprocessed_dataset / NNRUN_DIR / (f"active.shard-{shard.index}-of-{shard.count}.json" if shard
                                                     else ACTIVE_FILE)
        marked = False
        try:
            self.recovered = recover_dead_run(preprocessed_dataset, engine, opts.plans_name, active,
                                              self._own_leftovers if shard else None)
            attempts: list[dict] = []
            while True:
                marked = try_write_json(active, {"run_id": run_id, "pid": os.getpid(), "started": time.time()})
                report = self._run_locked(mem_bytes, dataset, preprocessed_root, preprocessed_dataset, run_id,
                                          info, image)
                attempts.append(attempt_summary(report))
                next_opts = self._retry_options(report) if len(attempts) <= self.retries else None
                if next_opts is None:
                    break
                # Only the unfinished cases run again: the agent resumes from the complete ones.
                if report.reason == "crash":
                    sink.stage(f"retrying after the crash ({len(attempts)} of {self.retries}): the unfinished "
                               f"cases with one worker, to tell a data-dependent crash from a flaky one")
                else:
                    sink.stage(f"retrying after the OOM kill ({len(attempts)} of {self.retries}): "
                               f"{self.last_recommendation.text}")
                self.opts = next_opts
                self._new_attempt()
                run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
            report.attempts = attempts
            if self.first_crash is not None:
                self._judge_crash_retry(report)
            if report.run_dir:
                self._write_report(Path(report.run_dir), report)
            return report
        finally:
            # Reached whatever the outcome; only a killed nnrun leaves the marker for the next run.
            if marked:
                active.unlink(missing_ok=True)
            locks.release()

    def _run_locked(self, mem_bytes: int, dataset: RawDataset, preprocessed_root: Path,
                    preprocessed_dataset: Path, run_id: str, info, image) -> RunReport:
        opts, settings, sink = self.opts, self.settings, self.sink
        engine = self.engine
        try:
            run_dir = new_run_dir(preprocessed_dataset, run_id)
        except OSError as err:
            raise BadInputError(f"cannot create the run folder in {preprocessed_dataset}: {err.strerror}",
                                hint="free space in the output folder or pick another --preprocessed") from None
        if settings.runtime == "host":
            uid, gid, chown_back = os.getuid(), os.getgid(), False      # nnU-Net runs as the caller here
        else:
            uid, gid, chown_back = container_user(preprocessed_root)
        staging = preprocessed_dataset / STAGING     # the agent stages configurations here
        staging.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0 and (uid, gid) != (0, 0):
            # Outputs of the dataset (earlier runs included) must be writable by the unprivileged user.
            hand_over([p for p in preprocessed_dataset.iterdir() if p.name != NNRUN_DIR] + [run_dir, staging],
                      uid, gid)
            os.chown(preprocessed_dataset, uid, gid)
        log_path = run_dir / NNUNET_LOG
        spec = build_spec(opts, settings, dataset, preprocessed_dataset, run_dir, mem_bytes, run_id, (uid, gid))
        workers = {"npfp": opts.npfp, "np": opts.workers_per_configuration(), "schedule": settings.schedule}
        report = RunReport(outcome=Outcome.BUG, message="", dataset=dataset.name,
                           # what answered: DOCKER_HOST may point at a Podman service
                           runtime=info.name if settings.runtime in ("docker", "podman") else settings.runtime,
                           configurations=list(opts.configurations), workers=workers,
                           nnunet_argv=nnunet_argv(opts), image=settings.image, image_id=image.image_id,
                           run_id=run_id, run_dir=str(run_dir), log_path=str(log_path), limit_bytes=mem_bytes)

        if settings.schedule == "memory" and self.estimate is not None:
            from runner.run.admission import admission_plan
            per_config = opts.workers_per_configuration()
            plan = {"configurations": {c: admission_plan(self.estimate, c, max_workers=per_config.get(c, 1),
                                                         measured=self.earlier_peaks)
                                       for c in opts.configurations}}
            try_write_json(run_dir / SCHEDULE_FILE, plan)   # without it the agent uses a fixed pool
        from runner.run.admission import warm_workers
        warm = warm_workers(opts, self.estimate, settings.schedule, settings.np_auto,
                            (preprocessed_dataset / "dataset_fingerprint.json").is_file())
        if warm:     # the agent starts these workers while nnU-Net's main process imports and plans
            try_write_json(run_dir / WARM_FILE, warm)
        manifest = build_manifest(run_id, opts, settings, spec, dataset, info, image, mem_bytes)
        try_write_json(run_dir / MANIFEST_FILE, manifest)
        where = (f"with {image.ref.removeprefix('host:')} under this job's" if settings.runtime == "host"
                 else f"in {settings.image} under a")
        sink.stage(f"starting nnU-Net {where} {format_bytes(info.mem_total_bytes if settings.runtime == 'host' else mem_bytes)} "
                   f"cap (nnU-Net log: {log_path})")
        sink.event({"event": "run_start", "cases": len(dataset.cases), "limit_bytes": mem_bytes,
                    "log_path": str(log_path), "run_dir": str(run_dir)})
        started = time.time()
        interrupt: int | None = None
        exit_code: int | None = None
        monitor: CgroupMonitor | None = None
        log_thread: threading.Thread | None = None
        try:
            self.container_id = engine.create(spec)
            try:
                engine.start(self.container_id)
            except NnrunError as err:
                report.outcome, report.message, report.phase = Outcome.INFRA, err.one_line(), "startup"
                report.log_path = None          # nnU-Net never ran
                self._write_report(run_dir, report)
                return report
            cgroup_dir = getattr(engine, "cgroup_dir", None)       # --runtime host: the job's own cgroup
            monitor = CgroupMonitor(self.container_id, settings.cgroup_root, timeline_path=run_dir / TIMELINE_FILE,
                                    on_sample=sink.memory,
                                    cgroup_dir=cgroup_dir(self.container_id) if cgroup_dir else None).start()
            log_thread = threading.Thread(target=self._pump_logs, name="logs", daemon=True)
            log_thread.start()
            threading.Thread(target=self._watch_run_dir, args=(monitor, run_dir, len(dataset.cases)), name="watch",
                             daemon=True).start()
            exit_code = engine.wait(self.container_id)
        except RunInterrupted as stop:
            interrupt = stop.signum
            if self.container_id:
                try:
                    engine.stop(self.container_id, timeout_s=STOP_TIMEOUT_S)
                    exit_code = engine.wait(self.container_id, timeout_s=STOP_TIMEOUT_S + 5)
                except (NnrunError, TimeoutError, RunInterrupted):
                    pass
        finally:
            self._container_done.set()
            summary = MonitorSummary(readable=False, cgroup_dir=None, cgroup_version=None, samples=0,
                                     limit_bytes=None, peak_anon_bytes=None, peak_usage_bytes=None,
                                     oom_kill_first=None, oom_kill_last=None, error="monitor not started")
            engine_oom_killed, engine_events, status = False, 0, None
            try:
                if monitor:
                    summary = monitor.stop()
                if self.container_id:
                    try:
                        state = engine.state(self.container_id)
                        engine_oom_killed = state.oom_killed
                        if exit_code is None:
                            exit_code = state.exit_code
                    except Exception:  # noqa: BLE001 - best effort before removal
                        pass
                    if log_thread is not None:
                        log_thread.join(timeout=2)
                status = read_status(run_dir, self._log_tail)
                counter_readable = (summary.oom_kill_last is not None
                                    or (status is not None and status.oom_kill_end is not None))
                if self.container_id and not counter_readable:
                    try:
                        engine_events = engine.oom_event_count(self.container_id, started, time.time())
                    except Exception:  # noqa: BLE001 - only a fallback
                        engine_events = 0
            finally:
                if self.container_id:
                    engine.remove(self.container_id)      # never left behind, whatever failed above
        ended = time.time()

        facts, records, self.agent_ran = facts_from_run_folder(
            run_dir, status, host_oom_first=summary.oom_kill_first, host_oom_last=summary.oom_kill_last,
            exit_code=exit_code, engine_oom_killed=engine_oom_killed, engine_oom_events=engine_events,
            interrupt_signal=interrupt)
        remove_empty_fault_files(run_dir)
        verdict = classify(facts)
        self._fill(report, facts, verdict, status, summary, dataset, preprocessed_dataset, mem_bytes,
                   info.mem_total_bytes, log_path, started, ended, records)
        report.removed_outputs = list(self.recovered)
        if verdict.outcome is not Outcome.OK:
            leftovers = incomplete_outputs(preprocessed_dataset)
            if settings.shard is not None:
                leftovers = self._own_leftovers(leftovers)
            report.removed_outputs += remove_paths(leftovers)
        if settings.shard is not None:
            report.shard, report.shard_cases = str(settings.shard), list(self.shard_cases)
            report.dataset_complete = dataset_complete(preprocessed_dataset, opts.plans_name, opts.configurations)
            if report.outcome is Outcome.OK:
                report.message = wording.shard_ok_message(str(settings.shard), dataset.name, len(self.shard_cases),
                                                          report.duration_s, report.dataset_complete)
        if chown_back and settings.shard is None:
            # Shards run side by side in these folders: `nnrun merge` hands the dataset back at the end.
            hand_over([preprocessed_dataset], os.getuid(), os.getgid())
        if settings.plot:
            report.plot_path = self._plot(run_dir, report, dataset)
        manifest.update(ended=iso_time(ended), outcome=report.outcome.value, exit_code=report.exit_code)
        try_write_json(run_dir / MANIFEST_FILE, manifest)
        self._write_report(run_dir, report)
        return report

    # -- helpers ------------------------------------------------------------
    def _watch_run_dir(self, monitor: CgroupMonitor, run_dir: Path, fingerprint_cases: int) -> None:
        """Pass the supervisor's and the agent's events on as progress (warm the plot up when they say a
        core is idle); once the supervisor has written its status, read the cgroup again, let it exit."""
        tails = [JsonlTail(run_dir / EVENTS_FILE), JsonlTail(run_dir / AGENT_EVENTS_FILE)]
        status = run_dir / STATUS_FILE
        acked = False
        from runner.run.plot_job import PlotJob, WarmUpCue, guess_title
        plot_job = self._plot_job = (PlotJob(run_dir, WarmUpCue(fingerprint_cases, time.monotonic()))
                                     if self.settings.plot else None)
        while not self._container_done.is_set():
            events = [e for tail in tails for e in tail.read_new()]
            for event in events:
                self.sink.event(event)
            if plot_job is not None:
                plot_job.observe(events)
            if not acked and status.exists():
                monitor.final_sample()
                if plot_job is not None:    # nnU-Net has ended: draw memory.png while the container goes
                    plot_job.speculate(*guess_title(run_dir, monitor, parse_mem(self.settings.mem)))
                try:
                    (run_dir / HOST_ACK_FILE).write_text("read\n")
                except OSError:
                    pass
                acked = True
            time.sleep(0.02 if not acked else 0.1)
        for tail in tails:
            for event in tail.read_new():
                self.sink.event(event)

    def _pump_logs(self) -> None:
        try:
            for chunk in self.engine.logs(self.container_id):
                self._log_tail = (self._log_tail + chunk)[-65536:]
                self.sink.nnunet_output(chunk)
        except Exception:  # noqa: BLE001 - the stream ends when the container goes away
            return

    def _fill(self, report: RunReport, facts: RunFacts, verdict: Verdict, status: SupervisorStatus | None,
              summary: MonitorSummary, dataset: RawDataset, preprocessed_dataset: Path, mem_bytes: int,
              host_mem: int, log_path: Path, started: float, ended: float,
              records: list | None = None) -> None:
        opts = self.opts
        records = records or []
        status = status or SupervisorStatus(partial=True)
        o = verdict.outcome
        report.outcome = o
        report.interrupt_signal = facts.interrupt_signal
        report.container_exit_code = facts.container_exit_code
        report.duration_s = round(ended - started, 2)
        report.oom_kills = verdict.oom_kills
        report.oom_source = verdict.oom_source
        report.engine_oom_killed = facts.engine_oom_killed
        report.engine_oom_events = facts.engine_oom_events
        report.limit_bytes = summary.limit_bytes or status.limit_bytes or mem_bytes
        report.peak_anon_bytes = highest(summary.peak_anon_bytes, status.peak_anon_bytes)
        report.peak_usage_bytes = highest(summary.peak_usage_bytes, status.peak_usage_bytes)
        report.peak_shm_bytes = status.peak_shm_bytes
        report.cgroup_reader = "host" if summary.readable else ("container" if status.cgroup_version else None)
        phase = facts.phase if facts.phase in wording.PHASES else None
        report.phase = None if o is Outcome.OK else phase
        report.configuration = facts.configuration if report.phase == "preprocessing" else None
        workers = (opts.npfp if phase in ("verify", "fingerprint")
                   else opts.workers_per_configuration().get(facts.configuration or "", 1))
        progress = (status.progress or {}).get("Extracting dataset fingerprint")
        in_flight = cases_in_flight([c.case_id for c in dataset.cases], phase, facts.configuration, workers,
                                    preprocessed_dataset, opts.plans_name, progress[0] if progress else None)
        exact = False
        if records or getattr(self, "agent_ran", False):
            # The agent's log says exactly which cases had started and not ended.
            open_cases = [r for r in records if r.status == "unfinished" and r.phase == phase
                          and (phase != "preprocessing" or r.configuration == facts.configuration)]
            in_flight = list(dict.fromkeys(r.case for r in open_cases))
            exact = True
        if o in (Outcome.OOM, Outcome.ERROR, Outcome.KILLED, Outcome.INTERRUPTED):
            report.cases_in_flight = in_flight
            report.cases_exact = exact
        victims = [with_cases(v, records) for v in verdict.victims]
        report.victims = [v.to_dict() for v in victims]
        report.victim = verdict.victim
        report.victim_case = victims[0].case if victims else None
        report.cases = [r.to_dict() for r in records]
        report.monitor = {"samples": summary.samples, "interval_s": 0.1, "cpu_s": summary.cpu_s,
                          "wall_s": summary.wall_s,
                          "cpu_percent_of_one_core": round(100 * summary.cpu_s / summary.wall_s, 3)
                          if summary.wall_s else None,
                          "final_reading": summary.final_reading}
        # The plans nnU-Net wrote (read here, after the container) tell which configurations it skipped.
        report.configurations, report.configurations_skipped = ([], []) if opts.no_pp else preprocessed_and_skipped(
            opts.configurations, read_plans(preprocessed_dataset / f"{opts.plans_name}.json"), f"{opts.plans_name}.json")
        if report.configurations_skipped and tuple(opts.configurations) != DEFAULT_CONFIGURATIONS:
            # the advice below must not name a -c the plans lack: the next run would refuse it
            opts = opts.without_configurations([s["configuration"] for s in report.configurations_skipped])
        peak = wording.peak_clause(report.peak_anon_bytes, report.limit_bytes)
        if o is Outcome.OK:
            report.message = wording.ok_message(dataset.name, report.configurations, report.duration_s, opts.no_pp,
                                                peak, [s["configuration"] for s in report.configurations_skipped])
        elif o is Outcome.OOM:
            report.message = (wording.thrash_message(facts.thrashing, phase, facts.configuration, in_flight)
                              if verdict.oom_source == "thrashing" else wording.oom_message(
                                  victims[0] if victims else None, phase, facts.configuration, in_flight, exact)) + peak
            report.thrashing = facts.thrashing.to_json() if facts.thrashing else None
            if facts.interrupt_signal is not None:
                report.message += wording.stopped_after_oom_clause(facts.interrupt_signal)
            need = need_after_oom(self.estimate, opts, self.fingerprint_needed, self.earlier_peaks, phase,
                                  facts.configuration, records, victims, workers, report.limit_bytes,
                                  thrashed=verdict.oom_source == "thrashing")
            rec = recommend(verdict, phase, facts.configuration, opts, report.limit_bytes, host_mem, need,
                            fit_npfp=self.estimate.max_npfp if self.estimate else None,
                            fit_np=dict(self.estimate.max_np) if self.estimate else None)
            report.memory_needed = need.to_dict() if need is not None else None
            self.last_recommendation = rec
            if rec is not None:
                report.recommendation_text = rec.text
                if rec.options is not None:
                    mem_arg = format_mem_arg(rec.mem_bytes) if rec.mem_bytes else self.settings.mem
                    argv = nnrun_argv(rec.options, mem_arg, self.settings.passthrough_argv)
                    report.recommendation_argv = argv
                    report.recommendation = shlex.join(argv)
        elif verdict.death is not None and not self._output_disk_full(facts, log_path, preprocessed_dataset):
            self._fill_death(report, facts, verdict, verdict.death, dataset)
        elif o is Outcome.ERROR:
            line = facts.exception_line or _last_log_line(log_path) or f"exit status {facts.nnunet_returncode}"
            detail = ""
            if "No space left on device" in line or "Errno 28" in line or _disk_full(preprocessed_dataset):
                report.reason = "ENOSPC"
                detail = wording.enospc_detail(preprocessed_dataset.parent)
            if any(w in line.lower() for w in SHAPE_WORDS):
                bad = shape_mismatches(dataset)
                if bad:
                    detail = wording.shape_detail(bad)
            report.message = wording.error_message(phase, facts.configuration, line, detail)
            report.error_detail = line
            report.hint = wording.ERROR_HINT
        elif o is Outcome.KILLED:
            report.message = wording.killed_message(phase, facts.configuration, facts.nnunet_returncode,
                                                    facts.container_exit_code)
            report.hint = wording.KILLED_HINT
        elif o is Outcome.INTERRUPTED and facts.interrupt_signal is not None:
            report.message = wording.interrupted_message(facts.interrupt_signal, phase, facts.configuration)
        elif o is Outcome.INFRA:
            report.message = wording.infra_message(facts.container_exit_code, facts.start_error)
            report.phase = "startup"

    @staticmethod
    def _output_disk_full(facts: RunFacts, log_path: Path, preprocessed_dataset: Path) -> bool:
        """A worker's exception that is a full output disk is reported as ENOSPC, not as the worker's death."""
        line = facts.exception_line or _last_log_line(log_path) or ""
        if any(e.error and ("No space left on device" in e.error or "Errno 28" in e.error) for e in facts.case_errors):
            line += " No space left on device"
        if "/dev/shm" in line or shm_was_full(facts):
            return False
        return "No space left on device" in line or "Errno 28" in line or _disk_full(preprocessed_dataset)

    def _fill_death(self, report: RunReport, facts: RunFacts, verdict: Verdict, death: Death,
                    dataset: RawDataset) -> None:
        """A process died of something other than the OOM killer: who, of what, holding which case, why."""
        self.last_death = death
        reason = verdict.reason
        report.reason = reason
        report.phase = death.phase if death.phase in wording.PHASES else report.phase
        report.configuration = death.configuration if report.phase == "preprocessing" else None
        report.victims = [{"role": death.role, "pid": death.pid, "case": death.case}]
        report.victim, report.victim_case = death.role, death.case
        report.signal, report.signal_name = death.signal, death.signal_name
        report.crash_frame, report.crash_library = death.frame, death.library
        report.shm_size_bytes = facts.shm_size_bytes
        report.message = wording.death_message(death, reason, facts.peak_shm_bytes, facts.shm_size_bytes)
        if reason == "exception" and death.error and any(w in death.error.lower() for w in SHAPE_WORDS):
            bad = [m for m in shape_mismatches(dataset) if death.case is None or m.startswith(f"{death.case} ")]
            if bad:
                report.message += wording.shape_detail(bad)
        report.error_detail = facts.exception_line        # nnU-Net's words, quoted in the report
        if reason == "shm":
            current = parse_mem(self.settings.shm_size)
            needed = max(2 * (facts.peak_shm_bytes or 0), 2 * current)
            size = format_mem_arg(needed)
            passthrough = _with_option(self.settings.passthrough_argv, "--shm-size", size)
            argv = nnrun_argv(self.opts, self.settings.mem, passthrough)
            report.recommendation_text = (f"give /dev/shm more room: --shm-size {size} (was {self.settings.shm_size}); "
                                          f"it counts against the --mem cap")
            report.recommendation_argv, report.recommendation = argv, shlex.join(argv)
        elif reason == "crash":
            argv = nnrun_argv(self.opts.with_workers(np=1, npfp=1), self.settings.mem,
                              self.settings.passthrough_argv)
            report.recommendation_text = wording.crash_advice(death)
            report.recommendation_argv, report.recommendation = argv, shlex.join(argv)
        elif reason == "killed":
            report.hint = wording.KILLED_WORKER_HINT
        elif reason == "exception":
            report.hint = wording.EXCEPTION_HINT
        else:
            report.hint = wording.ERROR_HINT

    def _plot(self, run_dir: Path, report: RunReport, dataset: RawDataset) -> str | None:
        """memory.png, rendered once at the end; a plotting failure never changes the outcome."""
        try:
            from runner.run.plot_job import PlotJob, plot_title
            title = plot_title(dataset.name, report.outcome.value, report.limit_bytes)
            job = getattr(self, "_plot_job", None)
            job = job if job is not None and job.run_dir == run_dir else PlotJob(run_dir)
            return job.result(title, report.limit_bytes)    # drawn already when the title was foreseen
        except Exception as err:  # noqa: BLE001 - e.g. matplotlib missing: say so, keep the verdict
            report.plot_error = f"{type(err).__name__}: {err}"[:300]
            return None

    def _write_report(self, run_dir: Path, report: RunReport) -> None:
        # Not indented: json's C encoder, 5x faster than the indenting one on a 500-case report.
        try_write_json(run_dir / REPORT_FILE, to_json(report), indent=None)


def recover_dead_run(preprocessed_dataset: Path, engine: Engine, plans_name: str, active: Path | None = None,
                     keep_only: Callable[[list[Path]], list[Path]] | None = None) -> list[str]:
    """Clean up after an earlier nnrun that died without cleaning up (e.g. SIGKILLed).

    Its ``.nnrun/active.json`` is still there (we hold the locks, so it is not
    running).  If its container still runs, refuse; otherwise remove what the
    phase it died in may have left half-written, as that run would have.
    """
    active = active or preprocessed_dataset / NNRUN_DIR / ACTIVE_FILE
    try:
        dead = json.loads(active.read_text())
    except (OSError, ValueError):
        return []
    for cid in engine.list_containers(f"{RUN_LABEL}={dead.get('run_id')}"):
        if engine.state(cid).running:
            raise BadInputError(f"a container of an earlier nnrun run ({dead.get('run_id')}) is still writing "
                                f"{preprocessed_dataset.name}", hint=f"stop it: docker rm -f {cid[:12]}")
        engine.remove(cid)
    leftovers = incomplete_outputs(preprocessed_dataset)
    removed = remove_paths(keep_only(leftovers) if keep_only else leftovers)
    active.unlink(missing_ok=True)
    return removed


def _disk_full(folder: Path, below_bytes: int = 8 * 1024 * 1024) -> bool:
    """nnU-Net's error after a full disk need not say so (blosc2: 'Error while creating the NDArray')."""
    try:
        return shutil.disk_usage(folder).free < below_bytes
    except OSError:
        return False


def _last_log_line(log_path: Path) -> str | None:
    try:
        with open(log_path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - 8192))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    lines = [ln.strip() for ln in tail.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1] if lines else None


def _with_option(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag value`` set (replaced where it is, else added)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == flag and i + 1 < len(argv):
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out + [flag, value]
