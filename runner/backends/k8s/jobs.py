"""Kubernetes: nnrun's preprocessing as Jobs (the manifests).

Pure (no cluster is contacted, nothing is printed; the CLI layer is
:mod:`runner.cli.k8s`, the diagnosis of the Jobs' pods :mod:`runner.backends.k8s.pods`):
:func:`build_jobs` turns plain options (:class:`ManifestRequest`)
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

The ``kubernetes`` package is imported only by the functions that build or
deserialise client objects (:func:`client_module`), so ``nnrun --help`` and
``nnrun k8s diagnose`` work without it.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import re
from dataclasses import dataclass, replace
from decimal import Decimal

from runner import __version__
from runner.backends.k8s.names import (
    ANNOTATION_ARGV,
    COMPLETION_INDEX_KEY,
    CONTAINER_NAME,
    LABEL_DATASET,
    LABEL_ROLE,
    LABEL_SHARD_COUNT,
    LABEL_VERSION,
    ROLE_PLAN,
    ROLE_SHARDS,
)
from runner.backends.k8s.quantity import bytes_quantity
from runner.errors import BadInputError, InfraError
from runner.options import PreprocessOptions, nnunet_argv, validate, validate_configurations
from runner.run.contract import (
    CONTAINER_PREPROCESSED,
    CONTAINER_RAW,
    IMAGE_USER,
    container_command,
    container_environment,
)
from runner.run.settings import DEFAULT_IMAGE, RunSettings
from runner.shards import SHARD_INDEX_ENV, SHARD_LIST_ENV, Shard, ShardError, parse_shard_list
from runner.units import MIB, parse_mem

POD_NAME_ENV = "NNRUN_POD_NAME"
JOB_PARTS = ("all", "plan", "shards")
TMP_MEDIA = ("disk", "memory")
DEFAULT_SHM_SIZE = "256m"       # as `nnrun preprocess --shm-size`
DEFAULT_TMP_SIZE = "1g"         # as the Docker container's tmpfs /tmp (runner.engines.base.ContainerSpec)
# The run folder of each pod, inside the preprocessed dataset folder (the only writable volume):
# one per pod, named after it, so that retried and resubmitted pods never share one.
RUN_DIR_TEMPLATE = CONTAINER_PREPROCESSED + "/{dataset}/.nnrun/runs/$(" + POD_NAME_ENV + ")"

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
    validate_configurations(req.opts, None)   # the plans are on the cluster's volume: the planner's names
    if req.opts.no_pp:
        raise BadInputError("--no_pp is what the plan Job runs; render it with --job plan")
    parse_mem(req.mem)
    parse_mem(req.shm_size, "--shm-size")
    parse_mem(req.tmp_size, "--tmp-size")
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
