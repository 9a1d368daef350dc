"""Kubernetes: nnrun's preprocessing as Jobs, and the diagnosis of their pods.

Two halves, both pure (no cluster is contacted, nothing is printed; the CLI
layer is :mod:`runner.cli.k8s`):

* **Manifests.**  :func:`build_jobs` turns plain options (:class:`ManifestRequest`)
  into objects of the official ``kubernetes`` client: a plain Job that runs
  fingerprint extraction and planning once (nnU-Net's ``--no_pp``), and an
  Indexed Job whose completion index K preprocesses shard K of N
  (:mod:`runner.shards`).  Each pod runs exactly what ``nnrun preprocess``
  runs in its container: the image's supervisor with the arguments of
  :func:`runner.run.contract.container_command` and the environment of
  :func:`runner.run.contract.container_environment`; only the shard index comes from
  the downward API.  The pod gets the same hardening as nnrun's Docker
  container (non-root, read-only root file system, no capabilities, no
  privilege escalation, the raw data read-only) and memory request == limit
  == ``--mem`` (Kubernetes runs without swap by default).
* **Diagnosis.**  :func:`parse_pods` reads ``kubectl get pods -o json`` into
  :class:`PodRecord` dataclasses (from the plain JSON, so it needs no client),
  :func:`classify_pod` gives each pod's verdict and :func:`diagnose` groups
  them by completion index and shard, picks the worst outcome (exit codes
  from :mod:`runner.errors`, nothing parallel) and says which shards to
  resubmit with how much memory.

The ``kubernetes`` package is imported only by the functions that build or
deserialise client objects (:func:`client_module`), so ``nnrun --help`` and
``nnrun k8s diagnose`` work without it.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
import shlex
from dataclasses import dataclass, field, replace
from decimal import Decimal

from runner import __version__
from runner.errors import BadInputError, InfraError, Outcome, exit_code_for
from runner.options import PreprocessOptions, nnunet_argv, validate
from runner.run.contract import (
    CONTAINER_PREPROCESSED,
    CONTAINER_RAW,
    IMAGE_USER,
    container_command,
    container_environment,
)
from runner.run.settings import DEFAULT_IMAGE, RunSettings
from runner.shards import SHARD_COUNT_ENV, SHARD_INDEX_ENV, SHARD_LIST_ENV, Shard, ShardError, parse_shard_list
from runner.units import GIB, KIB, MIB, TIB, format_bytes, format_mem_arg, parse_mem

# -- names shared by the manifests and the diagnosis -------------------------

COMPLETION_INDEX_KEY = "batch.kubernetes.io/job-completion-index"   # annotation (and label since 1.28)
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")      # set by the Job controller
CONTAINER_NAME = "nnrun"
POD_NAME_ENV = "NNRUN_POD_NAME"
LABEL_DATASET = "io.nnrun.dataset"
LABEL_ROLE = "io.nnrun.role"                # "plan" or "shards"
LABEL_SHARD_COUNT = "io.nnrun.shard-count"
LABEL_VERSION = "io.nnrun.version"
ANNOTATION_ARGV = "io.nnrun.manifest-argv"  # JSON list: the `nnrun k8s manifest` command that made the Job
ROLE_PLAN = "plan"
ROLE_SHARDS = "shards"
JOB_PARTS = ("all", "plan", "shards")
TMP_MEDIA = ("disk", "memory")
DEFAULT_SHM_SIZE = "256m"       # as `nnrun preprocess --shm-size`
DEFAULT_TMP_SIZE = "1g"         # as the Docker container's tmpfs /tmp (runner.engines.base.ContainerSpec)
# The run folder of each pod, inside the preprocessed dataset folder (the only writable volume):
# one per pod, named after it, so that retried and resubmitted pods never share one.
RUN_DIR_TEMPLATE = CONTAINER_PREPROCESSED + "/{dataset}/.nnrun/runs/$(" + POD_NAME_ENV + ")"
CONTAINER_RUN_DIR_HINT = ".nnrun/runs/<pod name> in the preprocessed dataset folder"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DATASET_NAME = re.compile(r"^Dataset(\d{3})_[A-Za-z0-9_.-]+$")
_FILE_ENDING = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9._-]*$")
_CPUS = re.compile(r"^(\d+(\.\d{1,3})?|\d+m)$")
_MAX_PREFIX = 40                # leaves room for "-shards-1-3-m3072" within the 63 characters of a Job name


def client_module():
    """``kubernetes.client``, imported on first use, with a clear error when it is missing."""
    try:
        from kubernetes import client
    except ImportError:
        raise InfraError("the Kubernetes Python client is not installed (nnrun k8s manifest needs its models)",
                         hint="pip install 'nnrun[k8s]' (or: pip install kubernetes)") from None
    return client


# -- Kubernetes quantities ---------------------------------------------------

_BINARY_SUFFIXES = {"Ki": KIB, "Mi": MIB, "Gi": GIB, "Ti": TIB, "Pi": 1024 ** 5, "Ei": 1024 ** 6}
_DECIMAL_SUFFIXES = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
                     "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12,
                     "P": Decimal(10) ** 15, "E": Decimal(10) ** 18}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+|[numkMGTPE]?)$")


def quantity_bytes(text: str) -> int:
    """A memory quantity of the Kubernetes API (``3Gi``, ``1536Mi``, ``3G``, ``3e9``, ``268435456``) in bytes.

    Fractions of a byte round up, as Kubernetes does when it turns a quantity into bytes.
    Raises ValueError for anything else.
    """
    m = _QUANTITY.match(str(text).strip())
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number, suffix = Decimal(m.group(1)), m.group(2)
    if suffix in _BINARY_SUFFIXES:
        value = number * _BINARY_SUFFIXES[suffix]
    elif suffix[:1] in ("e", "E"):
        value = number * Decimal(10) ** int(suffix[1:])
    else:
        value = number * _DECIMAL_SUFFIXES[suffix]
    return int(value.to_integral_value(rounding="ROUND_CEILING"))


def bytes_quantity(n_bytes: int) -> str:
    """Bytes as a quantity: the largest binary suffix that divides them exactly (``3Gi``, ``1536Mi``), else
    the plain number; ``quantity_bytes(bytes_quantity(n)) == n`` always."""
    for suffix in ("Ti", "Gi", "Mi", "Ki"):
        unit = _BINARY_SUFFIXES[suffix]
        if n_bytes % unit == 0:
            return f"{n_bytes // unit}{suffix}"
    return str(n_bytes)


# -- manifests ---------------------------------------------------------------

@dataclass(frozen=True)
class VolumeChoice:
    """Where a data folder comes from: a PersistentVolumeClaim or a directory on every node.

    Either holds the nnU-Net root folder (like ``$nnUNet_raw``); the dataset's
    own folder inside it is what gets mounted.
    """

    kind: str       # "claim" or "host_path"
    source: str     # the claim's name, or the node path of the root folder

    def flag(self, data: str) -> list[str]:
        return [f"--{data}-claim" if self.kind == "claim" else f"--{data}-host-path", self.source]


@dataclass(frozen=True)
class ManifestRequest:
    """Everything ``nnrun k8s manifest`` renders from: plain values, checked by :func:`validate_request`."""

    opts: PreprocessOptions          # nnU-Net's options as for `nnrun preprocess` (no --no_pp: that is the plan Job)
    mem: str                         # --mem: memory request == limit of every pod
    shards: int                      # N: the shard Job preprocesses the cases in N parts
    dataset_name: str                # DatasetXXX_Name
    file_ending: str                 # dataset.json's file_ending, e.g. .nii.gz
    raw: VolumeChoice
    preprocessed: VolumeChoice
    image: str = DEFAULT_IMAGE
    job: str = "all"                 # all | plan | shards
    only_shards: tuple[int, ...] | None = None   # resubmit these shards only (NNRUN_SHARD_LIST)
    parallelism: int | None = None   # at most this many shard pods at once [default: all]
    name: str | None = None          # Job name prefix [default: nnrun-dXXX]
    namespace: str | None = None
    shm_size: str = DEFAULT_SHM_SIZE
    tmp_medium: str = "disk"         # disk | memory (a tmpfs that counts against the memory limit)
    tmp_size: str = DEFAULT_TMP_SIZE
    run_as: tuple[int, int] = IMAGE_USER
    cpus: str | None = None          # requests.cpu == limits.cpu (Guaranteed QoS) when given
    ttl_seconds: int | None = None
    per_index_backoff: bool = True   # backoffLimitPerIndex 0 (Kubernetes >= 1.29) instead of backoffLimit 0

    @property
    def prefix(self) -> str:
        return self.name or f"nnrun-d{self.opts.dataset_id:03d}"

    @property
    def shard_list(self) -> list[int] | None:
        return list(self.only_shards) if self.only_shards is not None else None

    def parts(self) -> tuple[str, ...]:
        """The Jobs to render: a resubmission of some shards never repeats the planning."""
        if self.job == "all":
            return (ROLE_SHARDS,) if self.only_shards is not None else (ROLE_PLAN, ROLE_SHARDS)
        return (self.job,)

    def job_name(self, role: str) -> str:
        if role == ROLE_PLAN:
            return f"{self.prefix}-plan"
        if self.only_shards is None:
            return f"{self.prefix}-shards"
        # A resubmission gets a name of its own (the first Job may still exist), one per shard list and
        # memory, so that a second resubmission with more memory does not collide with the first.
        mem_tag = f"m{-(-parse_mem(self.mem) // MIB)}"
        name = f"{self.prefix}-shards-{'-'.join(map(str, self.only_shards))}-{mem_tag}"
        if len(name) > 63:
            digest = hashlib.sha256(",".join(map(str, self.only_shards)).encode()).hexdigest()[:8]
            name = f"{self.prefix}-shards-r{digest}-{mem_tag}"
        return name


def plan_options(opts: PreprocessOptions) -> PreprocessOptions:
    """The plan Job: fingerprint extraction and planning only (what `nnrun preprocess --no_pp` runs)."""
    return replace(opts, no_pp=True)


def shard_options(opts: PreprocessOptions) -> PreprocessOptions:
    """The shard Job: preprocessing only.  --clean and --verify_dataset_integrity belong to the plan Job
    (a shard that cleaned would delete the other shards' cases; runner.run.preprocess refuses them with --shard)."""
    return replace(opts, no_pp=False, clean=False, verify_dataset_integrity=False)


def validate_request(req: ManifestRequest) -> ManifestRequest:
    """Raise BadInputError, with a one-line message, for anything the Jobs could not run with."""
    validate(req.opts)
    if req.opts.no_pp:
        raise BadInputError("--no_pp is what the plan Job runs; render it with --job plan")
    parse_mem(req.mem)
    try:
        parse_mem(req.shm_size)
    except BadInputError as err:
        raise BadInputError(err.message.replace("--mem", "--shm-size")) from None
    try:
        parse_mem(req.tmp_size)
    except BadInputError as err:
        raise BadInputError(err.message.replace("--mem", "--tmp-size")) from None
    m = _DATASET_NAME.match(req.dataset_name)
    if not m:
        raise BadInputError(f"invalid dataset name {req.dataset_name!r}: give the raw folder's name, "
                            f"e.g. Dataset{req.opts.dataset_id:03d}_Name")
    if int(m.group(1)) != req.opts.dataset_id:
        raise BadInputError(f"dataset name {req.dataset_name} does not match -d {req.opts.dataset_id}")
    if not _FILE_ENDING.match(req.file_ending):
        raise BadInputError(f"invalid file ending {req.file_ending!r}: give dataset.json's file_ending, "
                            f"e.g. .nii.gz")
    if req.shards < 1:
        raise BadInputError(f"--shards must be at least 1 (got {req.shards})")
    if req.parallelism is not None and req.parallelism < 1:
        raise BadInputError(f"--parallelism must be at least 1 (got {req.parallelism})")
    if req.job not in JOB_PARTS:
        raise BadInputError(f"--job must be one of {', '.join(JOB_PARTS)} (got {req.job!r})")
    if req.only_shards is not None:
        if req.job == ROLE_PLAN:
            raise BadInputError("--only-shards resubmits shards; it cannot be combined with --job plan")
        try:
            parse_shard_list(",".join(map(str, req.only_shards)), req.shards)
        except ShardError as err:
            raise BadInputError(f"--only-shards: {err}") from None
    if not _DNS_LABEL.match(req.prefix) or len(req.prefix) > _MAX_PREFIX:
        raise BadInputError(f"invalid --name {req.prefix!r}: lowercase letters, digits and '-', at most "
                            f"{_MAX_PREFIX} characters (Job names become pod names and labels)")
    if req.namespace is not None and (not _DNS_LABEL.match(req.namespace) or len(req.namespace) > 63):
        raise BadInputError(f"invalid --namespace {req.namespace!r}")
    for what, choice in (("raw", req.raw), ("preprocessed", req.preprocessed)):
        if choice.kind == "claim":
            if not _DNS_SUBDOMAIN.match(choice.source) or len(choice.source) > 253:
                raise BadInputError(f"invalid --{what}-claim {choice.source!r}: a PersistentVolumeClaim name "
                                    f"(lowercase letters, digits, '-' and '.')")
        elif choice.kind == "host_path":
            if not choice.source.startswith("/"):
                raise BadInputError(f"--{what}-host-path must be an absolute path on the nodes "
                                    f"(got {choice.source!r})")
        else:
            raise BadInputError(f"unknown volume kind {choice.kind!r} for the {what} data")
    if req.tmp_medium not in TMP_MEDIA:
        raise BadInputError(f"--tmp-medium must be disk or memory (got {req.tmp_medium!r})")
    uid, gid = req.run_as
    if uid <= 0 or gid <= 0:
        raise BadInputError(f"--run-as {uid}:{gid}: the pods never run as root (uid and gid above 0)")
    if req.cpus is not None and (not _CPUS.match(req.cpus) or not Decimal(req.cpus.rstrip("m")) > 0):
        raise BadInputError(f"invalid --cpus {req.cpus!r}: give cores (2, 0.5) or millicores (500m)")
    if req.ttl_seconds is not None and req.ttl_seconds < 0:
        raise BadInputError(f"--ttl must be 0 or more seconds (got {req.ttl_seconds})")
    if not req.image.strip():
        raise BadInputError("--image is empty")
    for role in req.parts():
        if len(req.job_name(role)) > 63:
            raise BadInputError(f"the Job name {req.job_name(role)} is longer than 63 characters: use a shorter --name")
    return req


def manifest_argv(req: ManifestRequest) -> list[str]:
    """The `nnrun k8s manifest` command line that renders these Jobs again, without any local folder.

    Stored on the Jobs and pods (annotation io.nnrun.manifest-argv), so that
    `nnrun k8s diagnose` can print the exact command that resubmits shards.
    """
    argv = ["nnrun", "k8s", "manifest", "-d", str(req.opts.dataset_id), "--mem", req.mem,
            "--shards", str(req.shards), "--dataset-name", req.dataset_name, "--file-ending", req.file_ending,
            *req.raw.flag("raw"), *req.preprocessed.flag("preprocessed")]
    optional = (("--image", req.image, DEFAULT_IMAGE), ("--name", req.name, None),
                ("--namespace", req.namespace, None), ("--parallelism", req.parallelism, None),
                ("--shm-size", req.shm_size, DEFAULT_SHM_SIZE), ("--tmp-medium", req.tmp_medium, "disk"),
                ("--tmp-size", req.tmp_size, DEFAULT_TMP_SIZE),
                ("--run-as", f"{req.run_as[0]}:{req.run_as[1]}", f"{IMAGE_USER[0]}:{IMAGE_USER[1]}"),
                ("--cpus", req.cpus, None), ("--ttl", req.ttl_seconds, None), ("--job", req.job, "all"),
                ("--only-shards", ",".join(map(str, req.only_shards)) if req.only_shards else None, None))
    for flag, value, default in optional:
        if value is not None and value != default:
            argv += [flag, str(value)]
    if not req.per_index_backoff:
        argv.append("--no-per-index-backoff")
    argv += nnunet_argv(replace(req.opts, extra_args=()))[3:]     # nnU-Net's options, without "-d ID"
    if req.opts.extra_args:
        argv += ["--", *req.opts.extra_args]
    return argv


def _k8s_literal(arg: str) -> str:
    """An argument Kubernetes passes on unchanged: it expands $(VAR) in args, and $$ is a literal $."""
    return arg.replace("$(", "$$(")


def label_value(text: str) -> str:
    """A valid label value (63 characters of [A-Za-z0-9._-], alphanumeric at both ends)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)


def _model_has_field(model_cls, name: str) -> bool:
    """Whether this client version's model knows a field (older clients lack newer Job fields)."""
    return name in (getattr(model_cls, "openapi_types", None) or getattr(model_cls, "model_fields", {}))


def _pod_environment(req: ManifestRequest, role: str, run_dir: str) -> list:
    """The container's env: exactly container_environment()'s, plus the downward-API variables."""
    k = client_module()
    if role == ROLE_PLAN:
        opts, settings = plan_options(req.opts), RunSettings(mem=req.mem, image=req.image, schedule="fixed")
    else:
        # Shard(0, N) makes container_environment write the shard variables; the index is then replaced by
        # the pod's completion index.  "fixed": the memory-aware admission plan is made by a host-side nnrun.
        opts = shard_options(req.opts)
        settings = RunSettings(mem=req.mem, image=req.image, schedule="fixed", shard=Shard(0, req.shards))
    env_values = container_environment(opts, settings, req.file_ending, run_dir=run_dir,
                                       dataset_name=req.dataset_name, test_hooks=False)

    def field_ref(path: str):
        return k.V1EnvVarSource(field_ref=k.V1ObjectFieldSelector(field_path=path))

    # First, so that later values (and the args) may use $(NNRUN_POD_NAME).
    env = [k.V1EnvVar(name=POD_NAME_ENV, value_from=field_ref("metadata.name"))]
    for name, value in env_values.items():
        if name == SHARD_INDEX_ENV:
            env.append(k.V1EnvVar(name=name, value_from=field_ref(f"metadata.annotations['{COMPLETION_INDEX_KEY}']")))
        else:
            env.append(k.V1EnvVar(name=name, value=value))
    if role == ROLE_SHARDS and req.only_shards is not None:
        # Index i of this Job runs shard list[i] (runner.shards.shard_from_env).
        env.append(k.V1EnvVar(name=SHARD_LIST_ENV, value=",".join(map(str, req.only_shards))))
    return env


def _volumes(req: ManifestRequest) -> tuple[list, list]:
    """(volumes, mounts): the dataset's raw folder read-only, its preprocessed folder, /tmp and /dev/shm."""
    k = client_module()
    dataset = req.dataset_name
    volumes, mounts = [], []
    for vol_name, choice, mount_path, read_only in (
            ("raw", req.raw, f"{CONTAINER_RAW}/{dataset}", True),
            ("preprocessed", req.preprocessed, f"{CONTAINER_PREPROCESSED}/{dataset}", False)):
        if choice.kind == "claim":
            # The claim holds the nnU-Net root folder; only the dataset's folder (subPath) is mounted.
            volumes.append(k.V1Volume(name=vol_name, persistent_volume_claim=k.V1PersistentVolumeClaimVolumeSource(
                claim_name=choice.source, read_only=read_only or None)))
            mounts.append(k.V1VolumeMount(name=vol_name, mount_path=mount_path, sub_path=dataset,
                                          read_only=read_only or None))
        else:
            # "Directory": a missing folder stops the pod before it starts, instead of kubelet creating a
            # root-owned one that the non-root container could not write.
            volumes.append(k.V1Volume(name=vol_name, host_path=k.V1HostPathVolumeSource(
                path=f"{choice.source.rstrip('/')}/{dataset}", type="Directory")))
            mounts.append(k.V1VolumeMount(name=vol_name, mount_path=mount_path, read_only=read_only or None))
    # The root file system is read-only: nnU-Net and Python need a writable /tmp (HOME is /tmp too).
    # medium Memory would be a tmpfs whose pages count against the memory limit, like Docker's tmpfs.
    volumes.append(k.V1Volume(name="tmp", empty_dir=k.V1EmptyDirVolumeSource(
        medium="Memory" if req.tmp_medium == "memory" else None,
        size_limit=bytes_quantity(parse_mem(req.tmp_size)))))
    mounts.append(k.V1VolumeMount(name="tmp", mount_path="/tmp"))
    # As `docker run --shm-size`: a sized tmpfs (pages in use count against the memory limit).
    volumes.append(k.V1Volume(name="dshm", empty_dir=k.V1EmptyDirVolumeSource(
        medium="Memory", size_limit=bytes_quantity(parse_mem(req.shm_size)))))
    mounts.append(k.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    return volumes, mounts


def _labels(req: ManifestRequest, role: str) -> dict[str, str]:
    labels = {LABEL_DATASET: label_value(req.dataset_name), LABEL_ROLE: role, LABEL_VERSION: label_value(__version__)}
    if role == ROLE_SHARDS:
        labels[LABEL_SHARD_COUNT] = str(req.shards)
    return labels


def build_job(req: ManifestRequest, role: str):
    """One Job (a ``V1Job`` of the kubernetes client): the plan Job or the Indexed shard Job."""
    k = client_module()
    run_dir = RUN_DIR_TEMPLATE.format(dataset=req.dataset_name)
    opts = plan_options(req.opts) if role == ROLE_PLAN else shard_options(req.opts)
    # The supervisor's arguments exactly as `nnrun preprocess` passes them; no host waits for the pod.
    args = [arg if arg == run_dir else _k8s_literal(arg)
            for arg in container_command(opts, run_dir=run_dir, wait_for_host=False)]
    volumes, mounts = _volumes(req)
    memory = bytes_quantity(parse_mem(req.mem))
    resources = {"memory": memory}
    if req.cpus is not None:
        resources["cpu"] = req.cpus
    uid, gid = req.run_as
    container = k.V1Container(
        name=CONTAINER_NAME,
        image=req.image,
        image_pull_policy="IfNotPresent",
        # The image's ENTRYPOINT (python3 -m runner.incontainer.supervisor) stays; these are its arguments.
        args=args,
        env=_pod_environment(req, role, run_dir),
        # request == limit: the scheduler reserves what the cap allows, and no swap (off by default).
        resources=k.V1ResourceRequirements(requests=dict(resources), limits=dict(resources)),
        security_context=k.V1SecurityContext(
            run_as_non_root=True, run_as_user=uid, run_as_group=gid,
            read_only_root_filesystem=True, allow_privilege_escalation=False, privileged=False,
            capabilities=k.V1Capabilities(drop=["ALL"]),
            seccomp_profile=k.V1SeccompProfile(type="RuntimeDefault")),
        volume_mounts=mounts,
        # When the container fails, the end of its output (nnU-Net's last lines) becomes the
        # termination message that `kubectl get pods -o json` shows and `nnrun k8s diagnose` reads.
        termination_message_policy="FallbackToLogsOnError",
    )
    annotations = {ANNOTATION_ARGV: json.dumps(manifest_argv(req))}
    pod_spec = k.V1PodSpec(
        containers=[container],
        restart_policy="Never",          # a failed pod stays for diagnosis; the Job does not restart it
        volumes=volumes,
        automount_service_account_token=False,   # nnU-Net needs no access to the Kubernetes API
        enable_service_links=False,
        security_context=k.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=uid, run_as_group=gid, fs_group=gid,
            # Only when the volume's root is not already the group's: no recursive chown of a large
            # dataset at every pod start.
            fs_group_change_policy="OnRootMismatch",
            seccomp_profile=k.V1SeccompProfile(type="RuntimeDefault")),
    )
    labels = _labels(req, role)
    template = k.V1PodTemplateSpec(metadata=k.V1ObjectMeta(labels=dict(labels), annotations=dict(annotations)),
                                   spec=pod_spec)
    if role == ROLE_PLAN:
        spec = k.V1JobSpec(completions=1, parallelism=1, backoff_limit=0, template=template,
                           ttl_seconds_after_finished=req.ttl_seconds)
    else:
        count = len(req.only_shards) if req.only_shards is not None else req.shards
        spec = k.V1JobSpec(completion_mode="Indexed", completions=count,
                           parallelism=min(req.parallelism or count, count),
                           template=template, ttl_seconds_after_finished=req.ttl_seconds)
        if req.per_index_backoff and _model_has_field(k.V1JobSpec, "backoff_limit_per_index"):
            # Each index fails on its own: an OOM-killed shard does not stop the others
            # (with backoffLimit 0 the first failed pod fails the whole Job and kills the running shards).
            spec.backoff_limit_per_index = 0
        else:
            spec.backoff_limit = 0
    return k.V1Job(api_version="batch/v1", kind="Job",
                   metadata=k.V1ObjectMeta(name=req.job_name(role), namespace=req.namespace, labels=dict(labels)),
                   spec=spec)


def build_jobs(req: ManifestRequest) -> list:
    """The Jobs to apply, in order: the plan Job (unless resubmitting shards), then the shard Job."""
    validate_request(req)
    return [build_job(req, role) for role in req.parts()]


def to_documents(jobs: list) -> list[dict]:
    """The Jobs as plain JSON documents (the client's own serialisation: camelCase, no nulls)."""
    api = client_module().ApiClient()
    return [api.sanitize_for_serialization(job) for job in jobs]


def render_yaml(jobs: list) -> str:
    import yaml  # a dependency of the kubernetes client
    return yaml.safe_dump_all(to_documents(jobs), sort_keys=True, explicit_start=True, default_flow_style=False)


def render_json(jobs: list) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": to_documents(jobs)}, indent=2, sort_keys=True)


def deserialize(document: dict, type_name: str):
    """A JSON document as an object of the kubernetes client (e.g. ``"V1Job"``, ``"V1Pod"``), through the
    client's ``ApiClient.deserialize``, as if the API server had sent it."""
    api = client_module().ApiClient()
    text = json.dumps(document)
    if "response_text" in inspect.signature(api.deserialize).parameters:
        return api.deserialize(text, type_name, "application/json")     # clients whose models are pydantic

    class _Response:            # older clients read the body from a response object's .data
        data = text
    return api.deserialize(_Response(), type_name)


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


def diagnose(pods: list[PodRecord], shard_map: dict | None = None, ignored_pods: int = 0) -> Diagnosis:
    """The diagnosis of a set of pods: per completion index, then the worst outcome and what to resubmit."""
    from runner.shards import cases_of

    latest: dict[tuple, list[PodRecord]] = {}
    for pod in pods:
        latest.setdefault((pod.job, pod.index), []).append(pod)
    entries: list[IndexEntry] = []
    for group in latest.values():
        group.sort(key=_created_key)
        entry = IndexEntry(pod=group[-1], verdict=classify_pod(group[-1]), earlier_pods=len(group) - 1)
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
                mem = more_memory(max(limits)) if limits else None
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
    head = "nnrun: oom (out of memory)" if d.outcome is Outcome.OOM else f"nnrun: {d.outcome.value}"
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
