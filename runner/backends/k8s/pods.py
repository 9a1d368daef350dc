"""Kubernetes: the diagnosis of the pods of nnrun's Jobs (:mod:`runner.backends.k8s.jobs`).

Pure (no cluster is contacted, nothing is printed; the CLI layer is
:mod:`runner.cli.k8s`): :func:`parse_pods` reads ``kubectl get pods -o json`` into
:class:`PodRecord` dataclasses (from the plain JSON, so it needs no client),
:func:`classify_pod` gives each pod's verdict and :func:`diagnose` groups
them by completion index and shard, picks the worst outcome (exit codes
from :mod:`runner.errors`, nothing parallel) and says which shards to
resubmit with how much memory.
"""
from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field

from runner import __version__
from runner.backends.k8s.names import (
    ANNOTATION_ARGV,
    COMPLETION_INDEX_KEY,
    CONTAINER_NAME,
    LABEL_DATASET,
    LABEL_ROLE,
    LABEL_SHARD_COUNT,
    ROLE_PLAN,
    ROLE_SHARDS,
)
from runner.backends.k8s.quantity import bytes_quantity, quantity_bytes
from runner.diagnosis.wording import headline
from runner.errors import BadInputError, NnrunError, Outcome, exit_code_for
from runner.shards import SHARD_COUNT_ENV, SHARD_LIST_ENV, ShardError, parse_shard_list
from runner.units import format_bytes, format_mem_arg, parse_mem

JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")      # set by the Job controller
# How the diagnosis points to each pod's run folder (runner.backends.k8s.jobs.RUN_DIR_TEMPLATE).
CONTAINER_RUN_DIR_HINT = ".nnrun/runs/<pod name> in the preprocessed dataset folder"


# -- diagnosis: pod status documents ------------------------------------------

@dataclass(frozen=True)
class Termination:
    reason: str | None
    exit_code: int | None
    message: str | None = None
    finished_at: str | None = None


@dataclass(frozen=True)
class PodRecord:
    """What the diagnosis needs of one pod of ``kubectl get pods -o json``."""

    name: str
    namespace: str | None
    job: str | None
    role: str | None                 # plan | shards | None (not made by nnrun k8s manifest)
    dataset: str | None
    index: int | None                # the Job's completion index
    shard: int | None                # the shard it preprocesses (the index, through NNRUN_SHARD_LIST)
    shard_count: int | None
    phase: str | None
    created: str | None
    pod_reason: str | None = None    # status.reason: Evicted, DeadlineExceeded, ...
    pod_message: str | None = None
    unschedulable: str | None = None
    waiting_reason: str | None = None
    waiting_message: str | None = None
    running: bool = False
    terminated: Termination | None = None
    last_terminated: Termination | None = None
    restarts: int = 0
    memory_limit_bytes: int | None = None
    manifest_argv: list[str] | None = None
    node: str | None = None

    @property
    def unit(self) -> tuple:
        """What a later pod replaces: the same shard of the same dataset (also from a resubmitted Job),
        the plan Job of a dataset, else the same index of the same Job."""
        if self.shard is not None:
            return ("shard", self.dataset or self.job, self.shard_count, self.shard)
        if self.role == ROLE_PLAN:
            return ("plan", self.dataset or self.job)
        return ("index", self.job, self.index)


def _bad(message: str) -> BadInputError:
    return BadInputError(message, hint="give the output of kubectl get pods -o json (a file, or - for stdin)")


def _as_int(value) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _termination(state) -> Termination | None:
    term = (state or {}).get("terminated") if isinstance(state, dict) else None
    if not isinstance(term, dict):
        return None
    return Termination(reason=term.get("reason"), exit_code=_as_int(term.get("exitCode")),
                       message=term.get("message"), finished_at=term.get("finishedAt"))


def _env_value(container: dict, name: str) -> str | None:
    for var in container.get("env") or []:
        if isinstance(var, dict) and var.get("name") == name and "value" in var:
            return var.get("value")
    return None


def _memory_limit(container: dict, spec: dict) -> int | None:
    """The container's memory limit, else the pod-level one (spec.resources, Kubernetes >= 1.32)."""
    for resources in (container.get("resources"), spec.get("resources")):
        memory = ((resources or {}).get("limits") or {}).get("memory")
        if memory is not None:
            try:
                return quantity_bytes(memory)
            except ValueError:
                return None
    return None


def pod_record(pod: dict, where: str = "the pod") -> PodRecord:
    """One pod's JSON (as the API serves it) as a PodRecord.  Raises BadInputError when it is no pod."""
    if not isinstance(pod, dict) or pod.get("kind", "Pod") != "Pod" or not isinstance(pod.get("metadata"), dict):
        kind = pod.get("kind") if isinstance(pod, dict) else type(pod).__name__
        raise _bad(f"{where} is not a Pod (kind {kind!r})")
    meta = pod["metadata"]
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    status = pod.get("status") if isinstance(pod.get("status"), dict) else {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if not isinstance(labels, dict) or not isinstance(annotations, dict) or not meta.get("name"):
        raise _bad(f"{where} has no name or malformed labels/annotations")
    containers = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
    container = next((c for c in containers if c.get("name") == CONTAINER_NAME), containers[0] if containers else {})
    statuses = [s for s in status.get("containerStatuses") or [] if isinstance(s, dict)]
    cstatus = next((s for s in statuses if s.get("name") == container.get("name")), statuses[0] if statuses else {})
    state = cstatus.get("state") or {}
    waiting = state.get("waiting") if isinstance(state, dict) else None

    job = next((labels[k] for k in JOB_NAME_LABELS if labels.get(k)), None)
    if job is None:
        job = next((o.get("name") for o in meta.get("ownerReferences") or []
                    if isinstance(o, dict) and o.get("kind") == "Job"), None)
    index = _as_int(annotations.get(COMPLETION_INDEX_KEY, labels.get(COMPLETION_INDEX_KEY)))
    shard_count = _as_int(_env_value(container, SHARD_COUNT_ENV)) or _as_int(labels.get(LABEL_SHARD_COUNT))
    shard = None
    if shard_count is not None and index is not None:
        shard = index
        shard_list = _env_value(container, SHARD_LIST_ENV)
        if shard_list:
            try:
                listed = parse_shard_list(shard_list, shard_count)
                shard = listed[index] if 0 <= index < len(listed) else None
            except ShardError:
                shard = None
    argv = None
    if annotations.get(ANNOTATION_ARGV):
        try:
            parsed = json.loads(annotations[ANNOTATION_ARGV])
            argv = parsed if isinstance(parsed, list) and all(isinstance(a, str) for a in parsed) else None
        except ValueError:
            argv = None
    unschedulable = next((c.get("message") or c.get("reason") for c in status.get("conditions") or []
                          if isinstance(c, dict) and c.get("type") == "PodScheduled"
                          and c.get("status") == "False"), None)
    return PodRecord(
        name=str(meta["name"]), namespace=meta.get("namespace"), job=job, role=labels.get(LABEL_ROLE),
        dataset=labels.get(LABEL_DATASET), index=index, shard=shard, shard_count=shard_count,
        phase=status.get("phase"), created=meta.get("creationTimestamp"),
        pod_reason=status.get("reason"), pod_message=status.get("message"), unschedulable=unschedulable,
        waiting_reason=(waiting or {}).get("reason") if isinstance(waiting, dict) else None,
        waiting_message=(waiting or {}).get("message") if isinstance(waiting, dict) else None,
        running=isinstance(state, dict) and isinstance(state.get("running"), dict),
        terminated=_termination(state), last_terminated=_termination(cstatus.get("lastState")),
        restarts=_as_int(cstatus.get("restartCount")) or 0,
        memory_limit_bytes=_memory_limit(container, spec), manifest_argv=argv, node=spec.get("nodeName"))


def parse_pods(document) -> tuple[list[PodRecord], int]:
    """(the pods that belong to a Job, how many other pods were left out) of ``kubectl get pods -o json``:
    a v1 List (or PodList) of pods, or one Pod."""
    if not isinstance(document, dict):
        raise _bad(f"the input is a JSON {type(document).__name__}, not a Pod or a List of pods")
    kind = document.get("kind")
    if kind == "Pod" or (kind is None and "items" not in document and "metadata" in document):
        items = [document]
    elif kind in ("List", "PodList", None) and isinstance(document.get("items"), list):
        items = document["items"]
    else:
        raise _bad(f"the input is a {kind or 'JSON object'}, not a Pod or a List of pods")
    pods = [pod_record(item, f"item {i} of the list") for i, item in enumerate(items)]
    in_jobs = [p for p in pods if p.job is not None or p.role is not None]
    if not pods:
        raise BadInputError("the list holds no pods",
                            hint="check the namespace and label selector; pods of a Job with --ttl are "
                                 "deleted that long after it finished")
    if not in_jobs:
        raise BadInputError(f"none of the {len(pods)} pods belongs to a Job",
                            hint="select the Job's pods, e.g. "
                                 "kubectl get pods -l io.nnrun.dataset=DatasetXXX_Name -o json")
    return in_jobs, len(pods) - len(in_jobs)


# -- diagnosis: rules ---------------------------------------------------------

# Final states of a pod; "pending" and "running" have no outcome yet.
STATE_OK, STATE_OOM, STATE_ERROR, STATE_KILLED, STATE_INFRA = "ok", "oom", "error", "killed", "infra"
STATE_PENDING, STATE_RUNNING = "pending", "running"
_OUTCOME_OF_STATE = {STATE_OK: Outcome.OK, STATE_OOM: Outcome.OOM, STATE_ERROR: Outcome.ERROR,
                     STATE_KILLED: Outcome.KILLED, STATE_INFRA: Outcome.INFRA}
# Which outcome the exit code of a whole set of pods follows: an OOM kill first (the thing to fix
# with memory), then failures of nnU-Net, pods killed from outside, and a cluster that could not run them.
_SEVERITY = (Outcome.OOM, Outcome.ERROR, Outcome.KILLED, Outcome.INFRA, Outcome.OK)
# Waiting reasons that will not resolve on their own: the image or the pod spec is wrong.
_INFRA_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                  "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
WORKER_DIED_TEXT = "Some background worker is 6 feet under"
CGROUP_V1_NOTE = ("if this node is cgroup v1, an OOM kill of a worker looks like this (the container lives on "
                  "and nnU-Net exits 1); see the run folder's status.json (oom_kill counters) and nnunet.log")


@dataclass(frozen=True)
class PodVerdict:
    state: str                   # ok | oom | error | killed | infra | pending | running
    detail: str                  # one line: what Kubernetes says, and what it means

    @property
    def outcome(self) -> Outcome | None:
        return _OUTCOME_OF_STATE.get(self.state)


def _oom_detail(term: Termination) -> str:
    if term.exit_code == 137:
        return ("OOMKilled (exit 137): killed by the kernel at the memory limit (on cgroup v2 with Kubernetes "
                ">= 1.28 every process of the container is killed together: memory.oom.group)")
    # The runtime marks the container OOMKilled after any OOM kill in its cgroup, also of a worker
    # process that the container outlived (nnU-Net then exits 1: "Some background worker is 6 feet under").
    return (f"OOMKilled (exit {term.exit_code}): the runtime saw an OOM kill in the container, most likely of a "
            f"worker process, and nnU-Net then exited {term.exit_code}")


def classify_pod(pod: PodRecord) -> PodVerdict:
    """One pod's verdict from its status (the rules are in the README, section Kubernetes)."""
    term, last = pod.terminated, pod.last_terminated
    if term is not None and term.reason == "OOMKilled":
        return PodVerdict(STATE_OOM, _oom_detail(term))
    if term is None and last is not None and last.reason == "OOMKilled":
        now = "running again" if pod.running else f"now {pod.waiting_reason or pod.phase or 'waiting'}"
        return PodVerdict(STATE_OOM, f"{_oom_detail(last)}; restarted {pod.restarts} time(s), {now} under the "
                                     f"same limit")
    if pod.pod_reason == "Evicted":
        return PodVerdict(STATE_KILLED, f"evicted by the kubelet: {pod.pod_message or 'node under pressure'} "
                                        f"(--cpus makes the pod Guaranteed QoS, evicted last)")
    if pod.pod_reason == "DeadlineExceeded":
        return PodVerdict(STATE_KILLED, f"stopped at the Job's deadline: {pod.pod_message or 'activeDeadlineSeconds'}")
    if term is not None:
        code = term.exit_code
        if code == 0:
            return PodVerdict(STATE_OK, f"{term.reason or 'Completed'} (exit 0)")
        if term.reason in ("ContainerCannotRun", "StartError"):
            return PodVerdict(STATE_INFRA, f"{term.reason} (exit {code}): {_first_line(term.message)}")
        if code == 137:
            return PodVerdict(STATE_KILLED, f"{term.reason or 'Error'} (exit 137): killed by SIGKILL without an "
                                            f"OOM report (kubectl delete, preemption, a lost node?)")
        if code == 143:
            return PodVerdict(STATE_KILLED, f"{term.reason or 'Error'} (exit 143): stopped by SIGTERM (the Job was "
                                            f"deleted or suspended, the node drained?)")
        if code in (125, 126, 127):
            return PodVerdict(STATE_INFRA, f"{term.reason or 'Error'} (exit {code}): the supervisor could not run "
                                           f"nnU-Net: is --image an nnrun image? {_first_line(term.message)}".rstrip())
        if code == 1:
            if term.message and WORKER_DIED_TEXT in term.message:
                return PodVerdict(STATE_ERROR, f"error (exit 1): a worker process died (nnU-Net: "
                                               f"'{WORKER_DIED_TEXT}'); {CGROUP_V1_NOTE}")
            exception = exception_line(term.message)
            if exception:
                return PodVerdict(STATE_ERROR, f"error (exit 1): nnU-Net failed: {exception}")
            return PodVerdict(STATE_ERROR, f"error (exit 1): {CGROUP_V1_NOTE}")
        return PodVerdict(STATE_ERROR, f"{term.reason or 'Error'} (exit {code}): {_first_line(term.message)}".rstrip())
    if pod.waiting_reason in _INFRA_WAITING:
        return PodVerdict(STATE_INFRA, f"{pod.waiting_reason}: {_first_line(pod.waiting_message)}".rstrip(": "))
    if pod.phase == "Succeeded":
        return PodVerdict(STATE_OK, "Succeeded")
    if pod.phase == "Failed":
        return PodVerdict(STATE_ERROR, f"Failed: {pod.pod_reason or ''} {pod.pod_message or ''}".strip())
    if pod.running or pod.phase == "Running":
        return PodVerdict(STATE_RUNNING, "running")
    why = pod.unschedulable or pod.waiting_reason or pod.phase or "no status yet"
    return PodVerdict(STATE_PENDING, f"pending: {why}")


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")


def exception_line(text: str | None, limit: int = 300) -> str | None:
    """The last Python exception line ("ValueError: ...") of a log tail (the termination message)."""
    for line in reversed((text or "").splitlines()):
        if _EXCEPTION_LINE.match(line.strip()):
            return line.strip()[:limit]
    return None


def _first_line(text: str | None, limit: int = 200) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else ""


@dataclass
class IndexEntry:
    """One pod, the latest of its completion index in its Job, with its verdict."""

    pod: PodRecord
    verdict: PodVerdict
    earlier_pods: int = 0            # older pods of the same index (retries)
    cases: list[str] | None = None   # the shard's cases, from --shard-map
    superseded: bool = False         # a later pod (e.g. a resubmitted Job) ran the same shard

    def to_json(self) -> dict:
        p, term, last = self.pod, self.pod.terminated, self.pod.last_terminated
        return {"job": p.job, "index": p.index, "shard": p.shard, "pod": p.name, "role": p.role,
                "phase": p.phase, "state": self.verdict.state,
                "outcome": self.verdict.outcome.value if self.verdict.outcome else None,
                "reason": term.reason if term else (p.waiting_reason or p.pod_reason),
                "exit_code": term.exit_code if term else None,
                "last_reason": last.reason if last else None, "last_exit_code": last.exit_code if last else None,
                "restarts": p.restarts, "memory_limit_bytes": p.memory_limit_bytes, "node": p.node,
                "detail": self.verdict.detail, "earlier_pods": self.earlier_pods, "cases": self.cases,
                "superseded": self.superseded}


@dataclass
class Resubmit:
    """One command that reruns some failed shards (or the plan Job)."""

    role: str
    shards: list[int]
    mem: str | None                  # the --mem to give (None: the limit is unknown)
    why: str
    argv: list[str] | None           # the full command when the pods carry their manifest's argv

    @property
    def command(self) -> str:
        if self.argv is not None:
            return shlex.join(self.argv) + " | kubectl apply -f -"
        flags = (f"--only-shards {','.join(map(str, self.shards))}" if self.role == ROLE_SHARDS else "--job plan")
        return f"nnrun k8s manifest <the options of the first manifest> {flags} --mem {self.mem or 'MORE'}"

    def to_json(self) -> dict:
        return {"role": self.role, "shards": self.shards, "mem": self.mem, "why": self.why, "argv": self.argv,
                "command": self.command}


@dataclass
class Diagnosis:
    outcome: Outcome
    message: str
    entries: list[IndexEntry]
    complete: bool                   # every index has a final state
    resubmit: list[Resubmit] = field(default_factory=list)
    ignored_pods: int = 0

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.outcome)

    def current(self) -> list[IndexEntry]:
        return [e for e in self.entries if not e.superseded]

    def shards_in(self, state: str) -> list[int]:
        return sorted({e.pod.shard for e in self.current() if e.verdict.state == state and e.pod.shard is not None})

    def to_json(self) -> dict:
        return {"schema_version": 1, "nnrun_version": __version__, "outcome": self.outcome.value,
                "exit_code": self.exit_code, "message": self.message, "complete": self.complete,
                "oom_shards": self.shards_in(STATE_OOM),
                "failed_shards": sorted({e.pod.shard for e in self.current() if e.pod.shard is not None
                                         and e.verdict.state in (STATE_OOM, STATE_ERROR, STATE_KILLED,
                                                                 STATE_INFRA)}),
                "indexes": [e.to_json() for e in self.entries],
                "resubmit": [r.to_json() for r in self.resubmit], "ignored_pods": self.ignored_pods}


def _created_key(pod: PodRecord) -> tuple:
    # RFC 3339 timestamps in UTC ("2026-11-25T10:00:00Z") sort as strings.
    return (pod.created or "", pod.name)


def more_memory(limit_bytes: int) -> str:
    """The --mem for a resubmission after an OOM kill: 1.5 times the limit, rounded up to read well."""
    return format_mem_arg(math.ceil(limit_bytes * 1.5))


_NEXT_MEM = re.compile(r"^\s*next:\s+nnrun .*?--mem\s+(\S+)", re.MULTILINE)


def advised_mem(pod: PodRecord) -> str | None:
    """The --mem of nnrun's `next:` line in the pod's termination message (its log tail), if any."""
    for term in (pod.terminated, pod.last_terminated):
        found = _NEXT_MEM.findall(term.message or "") if term is not None else []
        if found:
            try:
                parse_mem(found[-1])
            except NnrunError:
                continue
            return found[-1]
    return None


def _option_value(argv: list[str], flag: str) -> str | None:
    head = argv[:argv.index("--")] if "--" in argv else argv
    return head[head.index(flag) + 1] if flag in head[:-1] else None


def resubmit_argv(base: list[str], role: str, shards: list[int], mem: str) -> list[str]:
    """The manifest command that made a Job, for the given shards (or the plan Job) with another --mem."""
    drop_with_value = {"--mem", "--only-shards", "--job", "-o", "--output"}
    head, tail = (base[:base.index("--")], base[base.index("--"):]) if "--" in base else (list(base), [])
    out: list[str] = []
    i = 0
    while i < len(head):
        if head[i] in drop_with_value:
            i += 2
            continue
        if head[i] != "--json":
            out.append(head[i])
        i += 1
    extra = ["--job", "plan"] if role == ROLE_PLAN else ["--only-shards", ",".join(map(str, shards))]
    return out + ["--mem", mem, *extra] + tail


def diagnose(pods: list[PodRecord], shard_map: dict | None = None, ignored_pods: int = 0,
             run_folder_words: dict[str, tuple[str, str]] | None = None) -> Diagnosis:
    """The diagnosis of a set of pods: per completion index, then the worst outcome and what to resubmit.

    ``run_folder_words``: pod name -> (state, detail) read from that pod's run folder on the shared volume
    (a worker's crash, a full /dev/shm, a kill from outside): it replaces what the exit code alone says.
    """
    from runner.shards import cases_of

    latest: dict[tuple, list[PodRecord]] = {}
    for pod in pods:
        latest.setdefault((pod.job, pod.index), []).append(pod)
    entries: list[IndexEntry] = []
    for group in latest.values():
        group.sort(key=_created_key)
        verdict = classify_pod(group[-1])
        words = (run_folder_words or {}).get(group[-1].name)
        if words is not None and verdict.state in (STATE_ERROR, STATE_KILLED):
            verdict = PodVerdict(words[0], words[1])
        entry = IndexEntry(pod=group[-1], verdict=verdict, earlier_pods=len(group) - 1)
        if shard_map is not None and entry.pod.shard is not None:
            if _as_int(shard_map.get("shards")) != entry.pod.shard_count:
                raise BadInputError(f"the shard map splits the cases into {shard_map.get('shards')} shards, but the "
                                    f"pods ran {entry.pod.shard_count}: is it the map of these Jobs?")
            entry.cases = cases_of(shard_map, entry.pod.shard)
        entries.append(entry)
    # A later pod of the same shard (a resubmitted Job) replaces an earlier one.
    newest_of_unit: dict[tuple, IndexEntry] = {}
    for entry in sorted(entries, key=lambda e: _created_key(e.pod)):
        previous = newest_of_unit.get(entry.pod.unit)
        if previous is not None:
            previous.superseded = True
        newest_of_unit[entry.pod.unit] = entry
    # Jobs in the order they were created (the plan Job first), indexes in order within each.
    job_created: dict = {}
    for e in entries:
        key = _created_key(e.pod)
        job_created[e.pod.job] = min(job_created.get(e.pod.job, key), key)
    entries.sort(key=lambda e: (job_created[e.pod.job], e.pod.job or "", -1 if e.pod.index is None else e.pod.index))
    current = [e for e in entries if not e.superseded]
    outcomes = {e.verdict.outcome for e in current if e.verdict.outcome is not None}
    outcome = next(o for o in _SEVERITY if o in outcomes or o is Outcome.OK)
    complete = all(e.verdict.outcome is not None for e in current)
    diagnosis = Diagnosis(outcome=outcome, message="", entries=entries, complete=complete, ignored_pods=ignored_pods)
    diagnosis.resubmit = _resubmissions(current)
    diagnosis.message = _headline(diagnosis)
    return diagnosis


def _resubmissions(current: list[IndexEntry]) -> list[Resubmit]:
    """OOM-killed shards with 1.5 times the memory; shards killed from outside or failed otherwise with the
    same memory (after the cause is fixed); the plan Job likewise.  Shards still to come are not included."""
    out: list[Resubmit] = []
    for role in (ROLE_PLAN, ROLE_SHARDS):
        for states, why in (((STATE_OOM,), "OOM-killed: more memory"),
                            ((STATE_ERROR, STATE_KILLED), "failed or killed: the same memory, once the cause "
                                                          "is understood (status.json, nnunet.log)")):
            failed = [e for e in current if e.verdict.state in states and (e.pod.role or ROLE_SHARDS) == role
                      and (role == ROLE_PLAN or e.pod.shard is not None)]
            if not failed:
                continue
            limits = [e.pod.memory_limit_bytes for e in failed if e.pod.memory_limit_bytes]
            bases = [e.pod.manifest_argv for e in sorted(failed, key=lambda e: _created_key(e.pod))
                     if e.pod.manifest_argv]
            if states == (STATE_OOM,):
                # nnrun's own advice when it outlived the kill (its report's `next:` line, from the estimate and
                # the measured peaks: runner.estimate.need); 1.5 times the limit only when no pod has one.
                advised = [m for m in (advised_mem(e.pod) for e in failed) if m]
                mem = (max(advised, key=parse_mem) if advised else more_memory(max(limits)) if limits else None)
            else:       # the --mem the Job was made with, else its limit
                given = _option_value(bases[-1], "--mem") if bases else None
                mem = given or (format_mem_arg(max(limits)) if limits else None)
            shards = sorted({e.pod.shard for e in failed if e.pod.shard is not None})
            argv = resubmit_argv(bases[-1], role, shards, mem) if bases and mem else None
            out.append(Resubmit(role=role, shards=shards, mem=mem, why=why, argv=argv))
    return out


def _headline(d: Diagnosis) -> str:
    """One line: what was OOM-killed under which limit first, then the other failures, then what is left."""
    current = d.current()
    dataset = next((e.pod.dataset for e in current if e.pod.dataset), None)

    def listed(state: str) -> list[IndexEntry]:
        return [e for e in current if e.verdict.state == state]

    def names(entries: list[IndexEntry]) -> str:
        return ", ".join(_unit_name(e) for e in entries)

    clauses = []
    oom = listed(STATE_OOM)
    if oom:
        limits = sorted({e.pod.memory_limit_bytes for e in oom if e.pod.memory_limit_bytes})
        limit = (" under a " + " / ".join(format_bytes(b) for b in limits) + " memory limit") if limits else ""
        clauses.append(f"{names(oom)} OOM-killed{limit}")
    for state, verb in ((STATE_ERROR, "failed"), (STATE_KILLED, "killed from outside"),
                        (STATE_INFRA, "could not run")):
        if listed(state):
            clauses.append(f"{names(listed(state))} {verb}")
    running, pending, done = len(listed(STATE_RUNNING)), len(listed(STATE_PENDING)), len(listed(STATE_OK))
    waiting = ", ".join(f"{n} {what}" for n, what in ((running, "running"), (pending, "pending")) if n)
    prefix = f"{dataset}: " if dataset else ""
    if not clauses:
        if waiting:
            return f"{prefix}nothing failed so far: {done} done, {waiting}"
        return f"{prefix}all {len(current)} pod(s) completed"
    return prefix + "; ".join(clauses + ([waiting] if waiting else []))


def _unit_name(entry: IndexEntry) -> str:
    p = entry.pod
    if p.role == ROLE_PLAN:
        return "the plan Job"
    if p.shard is not None:
        return f"shard {p.shard}" + (f" (index {p.index})" if p.index != p.shard else "")
    return f"index {p.index} of {p.job}" if p.index is not None else f"pod {p.name}"


def render_diagnosis(d: Diagnosis) -> str:
    """The human diagnosis for stderr: a headline, one line per index, then what to run next."""
    head = headline(d.outcome)
    lines = [f"{head}: {d.message}"]
    job = object()
    for e in d.entries:
        p = e.pod
        if p.job != job:
            job = p.job
            limit = p.memory_limit_bytes
            kind = "plan Job" if p.role == ROLE_PLAN else ("Indexed Job" if p.index is not None else "Job")
            lines.append(f"  {kind} {p.job or '(no Job)'}" + (f", memory limit {format_bytes(limit)}" if limit else ""))
        where = f"index {p.index}" if p.index is not None else "pod"
        shard = f"shard {p.shard}" if p.shard is not None else ""
        extra = []
        if e.earlier_pods:
            extra.append(f"{e.earlier_pods} earlier pod(s)")
        if e.superseded:
            extra.append("rerun later")
        tail = f" [{'; '.join(extra)}]" if extra else ""
        lines.append(f"    {where:<9} {shard:<9} {e.verdict.state:<8} {p.name}{tail}")
        if e.verdict.state not in (STATE_OK, STATE_RUNNING):
            lines.append(f"              {e.verdict.detail}")
        if e.cases is not None and e.verdict.state != STATE_OK:
            lines.append(f"              cases: {', '.join(e.cases) if e.cases else '(none)'}")
    failed = [e for e in d.current() if e.verdict.state in (STATE_OOM, STATE_ERROR, STATE_KILLED)]
    if any(e.pod.role is not None for e in failed):
        lines.append(f"  run folders:  {CONTAINER_RUN_DIR_HINT} (status.json, events.jsonl, nnunet.log)")
    for e in failed:
        if e.pod.role is None and e.verdict.state == STATE_OOM and e.pod.memory_limit_bytes:
            lines.append(f"  advice:       {e.pod.name} is not an nnrun pod: raise its memory limit, e.g. to "
                         f"{bytes_quantity(parse_mem(more_memory(e.pod.memory_limit_bytes)))}")
    if d.ignored_pods:
        lines.append(f"  ignored:      {d.ignored_pods} pod(s) that belong to no Job")
    if not d.complete:
        lines.append("  not finished: run the diagnosis again when every index has ended")
    for r in d.resubmit:
        what = "the plan Job" if r.role == ROLE_PLAN else f"shard(s) {', '.join(map(str, r.shards))}"
        lines.append(f"  next:         {what}, {r.why}:")
        lines.append(f"                {r.command}")
    return "\n".join(lines)
