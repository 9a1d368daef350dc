"""``nnrun k8s``: render Kubernetes Jobs, diagnose their pods.  The only k8s module that prints.

The pure work is in :mod:`runner.backends.k8s.jobs` (manifests) and :mod:`runner.backends.k8s.pods`
(diagnosis); the ``kubernetes`` client is imported by the former on first use, so this module loads
without it (``nnrun --help``).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from runner.cli import common
from runner.cli import options as cli_options
from runner.cli.common import NNUNET_EXTRA, one_dataset
from runner.cli.common import result as show
from runner.dataset import load_raw_dataset, parse_dataset_id
from runner.errors import BadInputError, NnrunError
from runner.options import DEFAULT_NPFP
from runner.run.contract import IMAGE_USER
from runner.run.settings import DEFAULT_IMAGE

k8s_app = typer.Typer(
    name="k8s",
    help="Kubernetes: render the preprocessing as Jobs (manifest), diagnose their pods (diagnose).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _volume(data: str, claim: str | None, host_path: str | None):
    from runner.backends.k8s.jobs import VolumeChoice

    if (claim is None) == (host_path is None):
        raise BadInputError(f"give exactly one of --{data}-claim NAME and --{data}-host-path DIR "
                            f"(where the pods find the {data} data)")
    return VolumeChoice("claim", claim) if claim is not None else VolumeChoice("host_path", host_path)


def _dataset_name_and_ending(dataset: str, dataset_id: int, raw: str | None, dataset_name: str | None,
                             file_ending: str | None) -> tuple[str, str]:
    """From --dataset-name/--file-ending (or -d DatasetXXX_Name), else from the raw folder when it is here."""
    if dataset_name is None and dataset.strip().startswith("Dataset"):
        dataset_name = dataset.strip()
    if dataset_name is not None and file_ending is not None:
        return dataset_name, file_ending
    root = raw or os.environ.get("nnUNet_raw")
    if not root:
        raise BadInputError("the dataset's folder name and file ending are needed: pass --raw DIR (the nnU-Net raw "
                            "folder, when it is readable here) or --dataset-name and --file-ending")
    try:
        ds = load_raw_dataset(Path(root).expanduser(), dataset)        # a DatasetXXX_Name must match the folder
    except BadInputError as err:
        hint = f"{err.hint}; " if err.hint else ""
        raise BadInputError(err.message, hint=hint + "or pass --dataset-name and --file-ending") from None
    return dataset_name or ds.name, file_ending or ds.file_ending


def _parse_run_as(text: str) -> tuple[int, int]:
    try:
        uid, gid = (int(v) for v in text.split(":"))
    except ValueError:
        raise BadInputError(f"--run-as takes UID:GID, e.g. 1000:1000 (got {text!r})") from None
    return uid, gid


@k8s_app.command("manifest", context_settings=common.HELP)
def manifest_command(
    dataset: list[str] = typer.Option(..., "-d", metavar="ID", help="Dataset id (e.g. 501 or Dataset501_Name)."),
    mem: str = typer.Option(..., "--mem", metavar="SIZE",
                            help="Memory request == limit of every pod, docker syntax: 16g, 4096m "
                                 "(no swap: Kubernetes runs without by default)."),
    shards: int = typer.Option(..., "--shards", metavar="N",
                               help="N: the Indexed Job's pod K preprocesses shard K of N of "
                                    "the cases (1: one pod does all)."),
    raw_claim: Optional[str] = typer.Option(None, "--raw-claim", metavar="CLAIM",
                                            help="PersistentVolumeClaim holding the nnU-Net raw folder; its "
                                                 "DatasetXXX_Name folder is mounted read-only."),
    raw_host_path: Optional[str] = typer.Option(None, "--raw-host-path", metavar="DIR",
                                                help="Or: the nnU-Net raw folder on every node (hostPath); "
                                                     "DIR/DatasetXXX_Name must exist."),
    preprocessed_claim: Optional[str] = typer.Option(None, "--preprocessed-claim", metavar="CLAIM",
                                                     help="PersistentVolumeClaim holding the nnU-Net preprocessed "
                                                          "folder (ReadWriteMany when the pods run on several "
                                                          "nodes); its DatasetXXX_Name folder is mounted."),
    preprocessed_host_path: Optional[str] = typer.Option(None, "--preprocessed-host-path", metavar="DIR",
                                                         help="Or: the preprocessed folder on every node "
                                                              "(hostPath); DIR/DatasetXXX_Name must exist and be "
                                                              "writable by --run-as."),
    raw: Optional[str] = typer.Option(None, "--raw", metavar="DIR",
                                      help="The raw folder as seen here [default: $nnUNet_raw], "
                                           "read for the dataset's name and file ending only."),
    dataset_name: Optional[str] = typer.Option(None, "--dataset-name", metavar="NAME",
                                               help="DatasetXXX_Name, when the raw folder is not readable here."),
    file_ending: Optional[str] = typer.Option(None, "--file-ending", metavar="ENDING",
                                              help="dataset.json's file_ending (e.g. .nii.gz), with --dataset-name."),
    job: str = typer.Option("all", "--job", metavar="all|plan|shards",
                            help="all: the plan Job then the shard Job (two YAML documents); "
                                 "plan or shards: only that one (e.g. -o plan.yaml, -o shards.yaml)."),
    only_shards: Optional[str] = typer.Option(None, "--only-shards", metavar="K,K...",
                                              help="Resubmit these shards only, e.g. 1,3 (what nnrun k8s diagnose "
                                                   "prints): a shard Job of its own, no plan Job."),
    parallelism: Optional[int] = typer.Option(None, "--parallelism", metavar="N",
                                              help="At most this many shard pods at once "
                                                   "[default: all]."),
    image: str = typer.Option(DEFAULT_IMAGE, "--image", metavar="IMAGE",
                              help="The nnrun image, in a registry the cluster pulls from."),
    name: Optional[str] = typer.Option(None, "--name", metavar="PREFIX",
                                       help="Job name prefix [default: nnrun-dXXX]: Jobs "
                                            "PREFIX-plan, PREFIX-shards."),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", metavar="NAMESPACE", help="The Jobs' namespace."),
    shm_size: str = typer.Option("256m", "--shm-size", metavar="SIZE",
                                 help="/dev/shm: an emptyDir of medium Memory of this "
                                      "size (pages in use count against --mem)."),
    tmp_medium: str = typer.Option("disk", "--tmp-medium", metavar="disk|memory",
                                   help="/tmp (the root file system is read-only): an "
                                        "emptyDir on the node's disk, or memory: a tmpfs "
                                        "whose contents count against --mem."),
    tmp_size: str = typer.Option("1g", "--tmp-size", metavar="SIZE", help="Size limit of /tmp."),
    run_as: str = typer.Option(f"{IMAGE_USER[0]}:{IMAGE_USER[1]}", "--run-as", metavar="UID:GID",
                               help="UID:GID of the pods (never root); the GID is also the fsGroup."),
    cpus: Optional[str] = typer.Option(None, "--cpus", metavar="CPUS",
                                       help="CPU request == limit (e.g. 4 or 500m): the pods "
                                            "become Guaranteed QoS, evicted last under node "
                                            "memory pressure [default: none]."),
    ttl: Optional[int] = typer.Option(None, "--ttl", metavar="SECONDS",
                                      help="Delete finished Jobs (and their pods, so nothing is "
                                           "left to diagnose) after this many seconds."),
    per_index_backoff: bool = typer.Option(True, "--per-index-backoff/--no-per-index-backoff",
                                           help="backoffLimitPerIndex 0 (Kubernetes >= 1.29): a failed shard does "
                                                "not stop the others. Off: backoffLimit 0, the first failed shard "
                                                "fails the whole Job."),
    configurations: Optional[list[str]] = typer.Option(None, "-c", metavar="CONFIG...",
                                                       help="nnU-Net configurations "
                                                            "[default: 2d 3d_fullres 3d_lowres]."),
    np_: Optional[list[int]] = typer.Option(None, "-np", metavar="N...",
                                            help="Preprocessing workers per pod: one value or one per "
                                                 "configuration [default: nnU-Net's]."),
    npfp: int = typer.Option(DEFAULT_NPFP, "-npfp", metavar="N", help="Fingerprint extraction workers (the plan Job)."),
    verify_dataset_integrity: bool = typer.Option(False, "--verify_dataset_integrity",
                                                  help="nnU-Net's integrity check, in the plan Job."),
    clean: bool = typer.Option(False, "--clean", help="Recompute the fingerprint (the plan Job)."),
    planner: str = cli_options.PLANNER,
    fpe: str = cli_options.FINGERPRINT_EXTRACTOR,
    gpu_memory_target: Optional[float] = cli_options.GPU_MEMORY_TARGET,
    preprocessor_name: str = cli_options.PREPROCESSOR_NAME,
    overwrite_target_spacing: Optional[list[float]] = cli_options.OVERWRITE_TARGET_SPACING,
    overwrite_plans_name: Optional[str] = cli_options.OVERWRITE_PLANS_NAME,
    verbose: bool = cli_options.VERBOSE,
    no_pbar: bool = cli_options.NO_PBAR,
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE",
                                          help="Write the manifest to FILE [default: stdout]."),
    as_json: bool = typer.Option(False, "--json", help="A JSON v1 List instead of YAML documents."),
) -> None:
    """Render the Jobs that run `nnrun preprocess` in Kubernetes, sharded over pods.

    First a plan Job (fingerprint and planning, once: nnU-Net's --no_pp), then
    an Indexed Job with one completion index per shard; each pod runs the
    image's supervisor exactly as `nnrun preprocess --shard K/N` does, with
    memory request == limit == --mem, non-root, a read-only root file system,
    no capabilities and no privilege escalation.  Apply them in order:

    \b
      nnrun k8s manifest -d 501 --mem 6g --shards 4 --raw-claim nnunet-raw \\
          --preprocessed-claim nnunet-preprocessed --job plan -o plan.yaml
      (the same options with --job shards -o shards.yaml)
      kubectl apply -f plan.yaml && kubectl wait --for=condition=complete \\
          --timeout=24h job/nnrun-d501-plan && kubectl apply -f shards.yaml

    \b
    Then:
      kubectl get pods -l io.nnrun.dataset=Dataset501_Name -o json | nnrun k8s diagnose -

    Arguments after `--` go to nnUNetv2_plan_and_preprocess verbatim.
    """
    from runner.backends.k8s.jobs import ManifestRequest, build_jobs, render_json, render_yaml

    try:
        dataset_arg = one_dataset(dataset, "manifest")
        dataset_id = parse_dataset_id(dataset_arg)
        opts = cli_options.nnunet_options(
            dataset_id, configurations, np_, npfp, verify_dataset_integrity=verify_dataset_integrity, clean=clean,
            planner=planner, fpe=fpe, gpu_memory_target=gpu_memory_target, preprocessor_name=preprocessor_name,
            overwrite_target_spacing=overwrite_target_spacing, overwrite_plans_name=overwrite_plans_name,
            verbose=verbose, no_pbar=no_pbar, extra_args=NNUNET_EXTRA)     # after `--`, split off by app.main
        raw_volume = _volume("raw", raw_claim, raw_host_path)
        preprocessed_volume = _volume("preprocessed", preprocessed_claim, preprocessed_host_path)
        name_, ending = _dataset_name_and_ending(dataset_arg, dataset_id, raw, dataset_name, file_ending)
        shard_list = None
        if only_shards is not None:
            from runner.shards import ShardError, parse_shard_list
            try:
                # Syntax here; the range 0..N-1 is checked with the other options (validate_request).
                shard_list = tuple(parse_shard_list(only_shards, 10 ** 9))
            except ShardError as err:
                raise BadInputError(f"--only-shards: {err}") from None
        request = ManifestRequest(
            opts=opts, mem=mem, shards=shards, dataset_name=name_, file_ending=ending, raw=raw_volume,
            preprocessed=preprocessed_volume, image=image, job=job, only_shards=shard_list,
            parallelism=parallelism, name=name, namespace=namespace, shm_size=shm_size, tmp_medium=tmp_medium,
            tmp_size=tmp_size, run_as=_parse_run_as(run_as), cpus=cpus, ttl_seconds=ttl,
            per_index_backoff=per_index_backoff)
        jobs = build_jobs(request)
        text = render_json(jobs) + "\n" if as_json else render_yaml(jobs)
        if output is not None:
            try:
                output.write_text(text)
            except OSError as err:
                raise BadInputError(f"cannot write {output}: {err.strerror}") from None
            common.err(f"nnrun: wrote {len(jobs)} Job(s) to {output}: "
                 + ", ".join(j.metadata.name for j in jobs))
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
    except NnrunError as err:
        common.fail(err, as_json and output is None)
    raise typer.Exit(0)


@k8s_app.command("diagnose", context_settings=common.HELP)
def diagnose_command(
    pods_file: str = typer.Argument(..., metavar="FILE|-",
                                    help="The output of kubectl get pods -o json (a List of "
                                         "pods, or one Pod); - reads stdin."),
    shard_map: Optional[Path] = typer.Option(None, "--shard-map", metavar="FILE",
                                             help="The case->shard map (.nnrun/shards.<plans>.json in the "
                                                  "preprocessed dataset folder): lists each failed shard's cases."),
    run_folders: Optional[Path] = typer.Option(None, "--run-folders", metavar="DIR",
                                               help="The preprocessed dataset folder of the pods (their volume, "
                                                    "mounted here): each failed pod's run folder "
                                                    "(.nnrun/runs/<pod name>) then says why a worker died "
                                                    "(a crash and its signal, a full /dev/shm, a kill from "
                                                    "outside, an exception on a case)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Say which completion indexes (shards) were OOM-killed, under which memory limit, and what to resubmit.

    Reads the pods' status as Kubernetes reports it: per index the phase and
    the container's terminated state (and last state): OOMKilled is oom,
    Completed ok, Error (exit 1) error, exit 137/143 without OOMKilled killed,
    image and start failures infra; pending and running indexes have no
    outcome yet.  On cgroup v2 with Kubernetes >= 1.28 an OOM kill takes the
    whole container (memory.oom.group: OOMKilled, exit 137); on cgroup v1 a
    killed worker may leave the container alive, and nnU-Net exits 1 ("Some
    background worker is 6 feet under"): then see the run folder's
    status.json.  The resubmit command gives only the failed shards, OOM-killed
    ones with 1.5 times the memory.

    \b
      kubectl get pods -l io.nnrun.dataset=Dataset501_Name -o json | nnrun k8s diagnose -

    Exit code: the worst outcome's (3 oom, 4 error, 5 killed, 6 infra, in this
    order; 0 when nothing failed, also while pods still run); 2 bad input.
    """
    from runner.backends.k8s.pods import diagnose, parse_pods, render_diagnosis
    from runner.shards import ShardError, read_map

    try:
        where = "stdin" if pods_file == "-" else pods_file
        try:
            text = sys.stdin.read() if pods_file == "-" else Path(pods_file).read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise BadInputError(f"cannot read {where}: {getattr(err, 'strerror', None) or err}") from None
        try:
            document = json.loads(text)
        except ValueError as err:
            raise BadInputError(f"{where} is not JSON ({err.msg} at line {err.lineno})",
                                hint="give the output of kubectl get pods -o json") from None
        pods, ignored = parse_pods(document)
        mapping = None
        if shard_map is not None:
            try:
                mapping = read_map(shard_map)
            except ShardError as err:
                raise BadInputError(str(err)) from None
            if mapping is None:
                raise BadInputError(f"no shard map at {shard_map}")
            if not isinstance(mapping, dict) or not isinstance(mapping.get("assignment"), dict):
                raise BadInputError(f"{shard_map} is not an nnrun shard map")
        result = diagnose(pods, mapping, ignored, _run_folder_words(run_folders, pods) if run_folders else None)
    except NnrunError as err:
        common.fail(err, as_json)
        return
    show(render_diagnosis(result), as_json)
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
    raise typer.Exit(result.exit_code)


def _run_folder_words(folder: Path, pods) -> dict[str, tuple[str, str]]:
    """pod name -> (state, detail) from the pods' run folders: the same words as a local report."""
    from runner.run.postmortem import death_in_run_folder

    words = {}
    for pod in pods:
        found = death_in_run_folder(folder / ".nnrun" / "runs" / pod.name)
        if found is not None:
            verdict, message = found
            words[pod.name] = (verdict.outcome.value, message)
    return words
