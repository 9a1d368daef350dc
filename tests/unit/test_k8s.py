"""runner.backends.k8s and `nnrun k8s`: Jobs built with the kubernetes client's models, pod status diagnosis.

No cluster: the rendered Jobs and the pod status documents of
tests/fixtures/k8s/ (written from the Kubernetes API reference, see SOURCES.md
there) go through the client's own ``ApiClient.deserialize`` into ``V1Job`` /
``V1Pod``, as if an API server had sent them.  What a pod runs is compared with
what ``nnrun preprocess`` runs (``runner.run.contract.container_command`` and
``container_environment``), not with copied constants.
"""
from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s_client
from kubernetes.utils import parse_quantity

from runner.backends.k8s import jobs as k8s_jobs
from runner.backends.k8s import names as k8s_names
from runner.backends.k8s import pods as k8s_pods
from runner.backends.k8s import quantity as k8s_quantity
from runner.cli import app as cli
from runner.errors import EXIT_CODES, BadInputError, InfraError, Outcome
from runner.options import PreprocessOptions
from runner.run.contract import CONTAINER_PREPROCESSED, CONTAINER_RAW, container_command, container_environment
from runner.run.settings import RunSettings
from runner.shards import (
    SHARD_COUNT_ENV,
    SHARD_INDEX_ENV,
    SHARD_LIST_ENV,
    SHARD_MAP_ENV,
    Shard,
    build_map,
    cases_of,
    map_path,
    shard_from_env,
)
from runner.units import GIB, MIB, format_mem_arg, parse_mem

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "k8s"
REPO = Path(__file__).resolve().parents[2]
DATASET = "Dataset501_Demo"
RUN_DIR = f"{CONTAINER_PREPROCESSED}/{DATASET}/.nnrun/runs/$(NNRUN_POD_NAME)"


def make_request(**changes) -> k8s_jobs.ManifestRequest:
    opts = changes.pop("opts", PreprocessOptions(dataset_id=501, configurations=("3d_fullres",), np=(4,), npfp=2))
    base = k8s_jobs.ManifestRequest(opts=opts, mem="2g", shards=4, dataset_name=DATASET, file_ending=".nii.gz",
                                    raw=k8s_jobs.VolumeChoice("claim", "nnunet-raw"),
                                    preprocessed=k8s_jobs.VolumeChoice("claim", "nnunet-preprocessed"))
    return replace(base, **changes)


def rendered(req: k8s_jobs.ManifestRequest) -> list[dict]:
    """The YAML documents exactly as `nnrun k8s manifest` prints them, parsed back."""
    return list(yaml.safe_load_all(k8s_jobs.render_yaml(k8s_jobs.build_jobs(req))))


def by_role(docs: list[dict], role: str) -> dict:
    [doc] = [d for d in docs if d["metadata"]["labels"][k8s_names.LABEL_ROLE] == role]
    return doc


def container_of(doc: dict) -> dict:
    [container] = doc["spec"]["template"]["spec"]["containers"]
    return container


def env_of(doc: dict) -> dict[str, dict]:
    return {var["name"]: var for var in container_of(doc)["env"]}


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def list_pods() -> dict:
    return fixture("pods-list.json")


def pod_items(document: dict) -> list[dict]:
    return document["items"] if document.get("kind") == "List" else [document]


# -- manifests: the client's models --------------------------------------------------------------

def test_rendered_jobs_deserialize_into_v1job_and_round_trip():
    docs = rendered(make_request())
    assert [d["metadata"]["name"] for d in docs] == ["nnrun-d501-plan", "nnrun-d501-shards"]
    api = k8s_client.ApiClient()
    for doc in docs:
        job = k8s_jobs.deserialize(doc, "V1Job")
        assert isinstance(job, k8s_client.V1Job)
        assert isinstance(job.spec.template.spec.containers[0], k8s_client.V1Container)
        assert job.spec.template.spec.containers[0].resources.limits["memory"] == "2Gi"
        # Nothing is lost or invented between the YAML and the client's model.
        assert api.sanitize_for_serialization(job) == doc


def test_json_output_is_a_v1_list_of_the_same_jobs():
    req = make_request()
    listing = json.loads(k8s_jobs.render_json(k8s_jobs.build_jobs(req)))
    assert listing["apiVersion"] == "v1" and listing["kind"] == "List"
    assert listing["items"] == rendered(req)
    for item in listing["items"]:
        assert isinstance(k8s_jobs.deserialize(item, "V1Job"), k8s_client.V1Job)


def test_plan_job_runs_fingerprint_and_planning_once_with_no_pp():
    req = make_request(opts=PreprocessOptions(dataset_id=501, configurations=("3d_fullres",), np=(4,), npfp=2,
                                              clean=True, verify_dataset_integrity=True))
    plan = by_role(rendered(req), k8s_names.ROLE_PLAN)
    spec = plan["spec"]
    assert spec["completions"] == 1 and spec["parallelism"] == 1 and spec["backoffLimit"] == 0
    assert "completionMode" not in spec
    expected_opts = replace(req.opts, no_pp=True)
    assert container_of(plan)["args"] == container_command(expected_opts, run_dir=RUN_DIR, wait_for_host=False)
    assert "--no_pp" in container_of(plan)["args"] and "--clean" in container_of(plan)["args"]
    assert "--verify" in container_of(plan)["args"]          # the supervisor's own verify phase
    expected_env = container_environment(expected_opts, RunSettings(mem="2g", schedule="fixed"), ".nii.gz",
                                         run_dir=RUN_DIR, dataset_name=DATASET)
    env = env_of(plan)
    assert {n: v["value"] for n, v in env.items() if n != k8s_jobs.POD_NAME_ENV} == expected_env
    assert SHARD_COUNT_ENV not in env and SHARD_INDEX_ENV not in env


def test_shard_job_is_indexed_with_one_index_per_shard():
    docs = rendered(make_request(shards=5))
    spec = by_role(docs, k8s_names.ROLE_SHARDS)["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == 5 and spec["parallelism"] == 5
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("parallelism, expected", [(2, 2), (4, 4), (9, 4)])
def test_parallelism_is_capped_at_the_completions(parallelism, expected):
    spec = by_role(rendered(make_request(parallelism=parallelism)), k8s_names.ROLE_SHARDS)["spec"]
    assert spec["completions"] == 4 and spec["parallelism"] == expected


@pytest.mark.parametrize("mem", ["2g", "1.5g", "1000m", "3000000000", "4096m", "700m", "123456789"])
def test_memory_request_equals_limit_equals_mem(mem):
    for doc in rendered(make_request(mem=mem)):
        resources = container_of(doc)["resources"]
        assert resources["requests"] == resources["limits"]
        assert set(resources["limits"]) == {"memory"}
        quantity = resources["limits"]["memory"]
        assert k8s_quantity.quantity_bytes(quantity) == parse_mem(mem)
        assert parse_quantity(quantity) == parse_mem(mem)     # the client's own reading of the quantity


def test_cpus_make_request_equal_limit():
    resources = container_of(rendered(make_request(cpus="500m"))[1])["resources"]
    assert resources["requests"] == resources["limits"] == {"memory": "2Gi", "cpu": "500m"}


def test_every_hardening_field():
    for doc in rendered(make_request()):
        pod = doc["spec"]["template"]["spec"]
        container = container_of(doc)
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000 and sc["runAsGroup"] == 1000
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["privileged"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 1000 and psc["runAsGroup"] == 1000
        assert psc["fsGroup"] == 1000
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert pod["restartPolicy"] == "Never"
        assert "command" not in container          # the image's ENTRYPOINT (the supervisor) stays
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        raw = mounts[f"{CONTAINER_RAW}/{DATASET}"]
        assert raw["readOnly"] is True and raw["subPath"] == DATASET
        assert volumes[raw["name"]]["persistentVolumeClaim"] == {"claimName": "nnunet-raw", "readOnly": True}
        out = mounts[f"{CONTAINER_PREPROCESSED}/{DATASET}"]
        assert not out.get("readOnly") and out["subPath"] == DATASET
        assert volumes[out["name"]]["persistentVolumeClaim"] == {"claimName": "nnunet-preprocessed"}
        # /tmp: the root file system is read-only; on disk by default.
        assert volumes[mounts["/tmp"]["name"]]["emptyDir"] == {"sizeLimit": "1Gi"}
        shm = volumes[mounts["/dev/shm"]["name"]]["emptyDir"]
        assert shm["medium"] == "Memory" and k8s_quantity.quantity_bytes(shm["sizeLimit"]) == parse_mem("256m")
        # Nothing else is mounted, and nothing writable besides the outputs, /tmp and /dev/shm.
        assert set(mounts) == {f"{CONTAINER_RAW}/{DATASET}", f"{CONTAINER_PREPROCESSED}/{DATASET}", "/tmp",
                               "/dev/shm"}


def test_tmp_in_memory_and_host_paths():
    req = make_request(tmp_medium="memory", tmp_size="512m", shm_size="64m", run_as=(1234, 4321),
                       raw=k8s_jobs.VolumeChoice("host_path", "/srv/nnUNet_raw/"),
                       preprocessed=k8s_jobs.VolumeChoice("host_path", "/srv/nnUNet_preprocessed"))
    doc = rendered(req)[1]
    pod = doc["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container_of(doc)["volumeMounts"]}
    assert volumes[mounts["/tmp"]["name"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "512Mi"}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Mi"}
    raw = mounts[f"{CONTAINER_RAW}/{DATASET}"]
    assert raw["readOnly"] is True and "subPath" not in raw
    assert volumes[raw["name"]]["hostPath"] == {"path": f"/srv/nnUNet_raw/{DATASET}", "type": "Directory"}
    out = mounts[f"{CONTAINER_PREPROCESSED}/{DATASET}"]
    assert volumes[out["name"]]["hostPath"] == {"path": f"/srv/nnUNet_preprocessed/{DATASET}", "type": "Directory"}
    assert pod["securityContext"]["runAsUser"] == 1234 and pod["securityContext"]["fsGroup"] == 4321
    assert container_of(doc)["securityContext"]["runAsGroup"] == 4321


def test_shard_pods_run_what_nnrun_preprocess_runs():
    req = make_request(opts=PreprocessOptions(dataset_id=501, configurations=("2d", "3d_fullres"), np=(3, 2),
                                              npfp=2, clean=True, verify_dataset_integrity=True,
                                              overwrite_plans_name="MyPlans"))
    shard_job = by_role(rendered(req), k8s_names.ROLE_SHARDS)
    # A shard only preprocesses: --clean and the integrity check are the plan Job's (runner.run.preprocess refuses them
    # with --shard too).
    shard_opts = replace(req.opts, clean=False, verify_dataset_integrity=False)
    assert container_of(shard_job)["args"] == container_command(shard_opts, run_dir=RUN_DIR, wait_for_host=False)
    expected = container_environment(shard_opts, RunSettings(mem="2g", shard=Shard(0, 4), schedule="fixed"),
                                     ".nii.gz", run_dir=RUN_DIR, dataset_name=DATASET)
    env = env_of(shard_job)
    assert set(env) == set(expected) | {k8s_jobs.POD_NAME_ENV}
    for name, value in expected.items():
        if name == SHARD_INDEX_ENV:
            # The pod's completion index, from the downward API, instead of a fixed number.
            assert env[name]["valueFrom"] == {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
            assert "value" not in env[name]
        else:
            assert env[name] == {"name": name, "value": value}
    assert env[SHARD_COUNT_ENV]["value"] == "4"
    assert env[SHARD_MAP_ENV]["value"] == map_path(f"{CONTAINER_PREPROCESSED}/{DATASET}", "MyPlans")
    assert env["NNRUN_SKIP_PLANNING"]["value"] == "1" and env["NNRUN_PLANS_NAME"]["value"] == "MyPlans"
    assert env[k8s_jobs.POD_NAME_ENV]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_every_variable_used_in_the_args_is_defined_before_use():
    for doc in rendered(make_request()):
        names = [var["name"] for var in container_of(doc)["env"]]
        used = {m for arg in container_of(doc)["args"] for m in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg)}
        assert used == {k8s_jobs.POD_NAME_ENV}
        assert names[0] == k8s_jobs.POD_NAME_ENV
        assert RUN_DIR in container_of(doc)["args"]


def test_dollar_parentheses_in_nnunet_arguments_are_not_expanded():
    req = make_request(opts=PreprocessOptions(dataset_id=501, extra_args=("--comment", "$(HOME)x")))
    args = container_of(rendered(req)[1])["args"]
    assert args[-2:] == ["--comment", "$$(HOME)x"]


def test_resubmitting_some_shards():
    req = make_request(only_shards=(1, 3), mem="3g")
    docs = rendered(req)
    assert ([d["metadata"]["labels"][k8s_names.LABEL_ROLE] for d in docs]
            == [k8s_names.ROLE_SHARDS])   # no plan Job again
    [job] = docs
    assert job["spec"]["completions"] == 2 and job["spec"]["completionMode"] == "Indexed"
    assert job["metadata"]["name"] not in {"nnrun-d501-shards", "nnrun-d501-plan"}
    assert job["metadata"]["name"] != rendered(make_request(only_shards=(1, 3), mem="4g"))[0]["metadata"]["name"]
    env = env_of(job)
    assert env[SHARD_LIST_ENV]["value"] == "1,3" and env[SHARD_COUNT_ENV]["value"] == "4"
    # What the agent makes of it: index 1 of this Job preprocesses shard 3 of 4.
    agent_env = {SHARD_INDEX_ENV: "1", SHARD_COUNT_ENV: env[SHARD_COUNT_ENV]["value"],
                 SHARD_LIST_ENV: env[SHARD_LIST_ENV]["value"]}
    assert shard_from_env(agent_env) == Shard(3, 4)


def test_backoff_per_index_or_for_the_whole_job():
    spec = by_role(rendered(make_request()), k8s_names.ROLE_SHARDS)["spec"]
    assert spec["backoffLimitPerIndex"] == 0 and "backoffLimit" not in spec
    spec = by_role(rendered(make_request(per_index_backoff=False)), k8s_names.ROLE_SHARDS)["spec"]
    assert spec["backoffLimit"] == 0 and "backoffLimitPerIndex" not in spec


def test_labels_namespace_ttl_and_the_manifest_command():
    req = make_request(namespace="nnunet", ttl_seconds=3600)
    for doc in rendered(req):
        assert doc["metadata"]["namespace"] == "nnunet"
        assert doc["spec"]["ttlSecondsAfterFinished"] == 3600
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert labels[k8s_names.LABEL_DATASET] == DATASET and labels == doc["metadata"]["labels"]
        argv = json.loads(doc["spec"]["template"]["metadata"]["annotations"][k8s_names.ANNOTATION_ARGV])
        assert argv == k8s_jobs.manifest_argv(req)


def test_the_manifest_command_renders_the_same_jobs(capsys):
    """manifest_argv (stored on the pods, reused by diagnose) through the real CLI gives the same YAML."""
    req = make_request(namespace="nnunet", cpus="2", parallelism=2, shm_size="128m", tmp_medium="memory",
                       run_as=(1001, 1001), name="prep", ttl_seconds=60, per_index_backoff=False,
                       raw=k8s_jobs.VolumeChoice("host_path", "/srv/raw"),
                       opts=PreprocessOptions(dataset_id=501, configurations=("2d", "3d_fullres"), np=(3, 2),
                                              npfp=3, clean=True, overwrite_plans_name="P2",
                                              extra_args=("--no_pbar",)))
    code = cli.main(k8s_jobs.manifest_argv(req)[1:])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == k8s_jobs.render_yaml(k8s_jobs.build_jobs(req))


@pytest.mark.parametrize("changes, words", [
    ({"dataset_name": "Dataset502_Other"}, "does not match"),
    ({"dataset_name": "Demo"}, "invalid dataset name"),
    ({"file_ending": "nii.gz"}, "file ending"),
    ({"shards": 0}, "at least 1"),
    ({"only_shards": (4,)}, "not between 0 and 3"),
    ({"only_shards": (1,), "job": "plan"}, "--job plan"),
    ({"name": "Bad_Name"}, "--name"),
    ({"run_as": (0, 0)}, "never run as root"),
    ({"raw": k8s_jobs.VolumeChoice("host_path", "relative/raw")}, "absolute"),
    ({"preprocessed": k8s_jobs.VolumeChoice("claim", "Not A Claim")}, "PersistentVolumeClaim"),
    ({"cpus": "two"}, "--cpus"),
    ({"cpus": "0"}, "--cpus"),
    ({"mem": "0"}, "--mem"),
    ({"shm_size": "abc"}, "--shm-size"),
    ({"tmp_medium": "ssd"}, "--tmp-medium"),
    ({"parallelism": 0}, "--parallelism"),
    ({"opts": PreprocessOptions(dataset_id=501, no_pp=True)}, "--no_pp"),
    ({"opts": PreprocessOptions(dataset_id=501, configurations=("nonsense",))}, "unknown configuration 'nonsense'"),
])
def test_bad_requests_are_bad_input(changes, words):
    with pytest.raises(BadInputError) as raised:
        k8s_jobs.build_jobs(make_request(**changes))
    assert words in raised.value.one_line()


def test_kubernetes_is_imported_only_when_needed():
    code = ("import sys, runner.cli.app; from runner.cli.app import main\n"
            "assert main(['--help']) == 0\n"
            "assert main(['k8s', 'diagnose', 'tests/fixtures/k8s/pods-list.json']) == 3\n"
            "print('kubernetes' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_missing_client_is_a_clear_infra_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kubernetes", None)      # import kubernetes now raises ImportError
    with pytest.raises(InfraError, match="not installed"):
        k8s_jobs.client_module()
    code = cli.main(["k8s", "manifest", "-d", DATASET, "--file-ending", ".nii.gz", "--mem", "2g", "--shards", "2",
                     "--raw-claim", "r", "--preprocessed-claim", "p"])
    out, err = capsys.readouterr()
    assert code == EXIT_CODES[Outcome.INFRA] and out == ""
    assert err.count("\n") == 1 and "pip install" in err and "Traceback" not in err


# -- quantities ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["3Gi", "3G", "1.5Gi", "3e9", "1E3", "128974848", "129M", "123Mi", "1k", "0.5Ki",
                                  "100m", "12e-1", ".5Gi", "2Ti", "7Ei"])
def test_quantity_bytes_agrees_with_the_client(text):
    assert k8s_quantity.quantity_bytes(text) == math.ceil(parse_quantity(text))


@pytest.mark.parametrize("text", ["", "3GB", "Gi", "3 Gi", "1.2.3", "0x10"])
def test_quantity_bytes_refuses_what_is_no_quantity(text):
    with pytest.raises(ValueError):
        k8s_quantity.quantity_bytes(text)


@pytest.mark.parametrize("n", [1, 1023, 1024, 3 * GIB, 1536 * MIB, 123456789, 5 * 1024 ** 4])
def test_bytes_quantity_round_trips(n):
    assert (k8s_quantity.quantity_bytes(k8s_quantity.bytes_quantity(n)) == n
            == parse_quantity(k8s_quantity.bytes_quantity(n)))


# -- pod status documents ------------------------------------------------------------------------

POD_FIXTURES = ["pod-completed.json", "pod-oomkilled.json", "pod-error.json", "pod-pending.json",
                "pod-restarted-oomkilled.json", "pods-list.json"]


@pytest.mark.parametrize("name", POD_FIXTURES)
def test_pod_fixtures_deserialize_into_v1pod(name):
    api = k8s_client.ApiClient()
    document = fixture(name)
    if document["kind"] == "List":
        assert len(document["items"]) == 5
    for item in pod_items(document):
        pod = k8s_jobs.deserialize(item, "V1Pod")
        assert isinstance(pod, k8s_client.V1Pod)
        assert pod.metadata.name == item["metadata"]["name"]
        assert pod.status.phase == item["status"]["phase"]
        statuses = pod.status.container_statuses or []
        assert [s.name for s in statuses] == [s["name"] for s in item["status"].get("containerStatuses", [])]
        # Stable through the client: serialised and read again, the same object.
        assert k8s_jobs.deserialize(api.sanitize_for_serialization(pod), "V1Pod") == pod


def test_the_list_of_pods_deserializes_as_a_pod_list():
    listing = list_pods()
    pods = k8s_jobs.deserialize({**listing, "kind": "PodList"}, "V1PodList")
    assert [p.metadata.name for p in pods.items] == [i["metadata"]["name"] for i in listing["items"]]


def test_pod_record_reads_index_shard_limit_and_command():
    record = k8s_pods.pod_record(fixture("pod-oomkilled.json"))
    assert record.name == "nnrun-d501-shards-1-m4dqz" and record.job == "nnrun-d501-shards"
    assert record.role == k8s_names.ROLE_SHARDS and record.dataset == DATASET
    assert record.index == 1 and record.shard == 1 and record.shard_count == 4
    assert record.memory_limit_bytes == 2 * GIB
    assert record.terminated == k8s_pods.Termination("OOMKilled", 137, None, "2026-11-25T10:06:01Z")
    assert record.manifest_argv[:3] == ["nnrun", "k8s", "manifest"]
    other = k8s_pods.pod_record(fixture("pod-restarted-oomkilled.json"))
    assert other.role is None and other.shard is None and other.index == 2 and other.job == "tile-export"
    assert other.memory_limit_bytes == 3_000_000_000 and other.restarts == 1 and other.running
    assert other.last_terminated.reason == "OOMKilled"


def test_completion_index_from_the_label_when_the_annotation_is_missing():
    pod = fixture("pod-oomkilled.json")
    del pod["metadata"]["annotations"][k8s_names.COMPLETION_INDEX_KEY]
    pod["metadata"]["labels"][k8s_names.COMPLETION_INDEX_KEY] = "1"
    assert k8s_pods.pod_record(pod).index == 1


@pytest.mark.parametrize("name, state, words", [
    ("pod-completed.json", "ok", "Completed (exit 0)"),
    ("pod-oomkilled.json", "oom", "OOMKilled (exit 137)"),
    ("pod-error.json", "error", "if this node is cgroup v1, an OOM kill of a worker looks like this"),
    ("pod-pending.json", "pending", "Insufficient memory"),
    ("pod-restarted-oomkilled.json", "oom", "restarted 1 time(s), running again"),
])
def test_each_fixture_pod_is_classified(name, state, words):
    verdict = k8s_pods.classify_pod(k8s_pods.pod_record(fixture(name)))
    assert verdict.state == state
    assert words in verdict.detail


def test_the_error_pod_names_the_dead_worker_and_the_run_folder():
    verdict = k8s_pods.classify_pod(k8s_pods.pod_record(fixture("pod-error.json")))
    assert verdict.outcome is Outcome.ERROR
    assert "Some background worker is 6 feet under" in verdict.detail and "status.json" in verdict.detail


def _with_termination(reason, code, message=None, pod_status=None):
    """The error pod with another termination (and pod-level status fields)."""
    pod = fixture("pod-error.json")
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    term.update(reason=reason, exitCode=code)
    term.pop("message", None)
    if message is not None:
        term["message"] = message
    pod["status"].update(pod_status or {})
    return pod


@pytest.mark.parametrize("pod, state, words", [
    (_with_termination("OOMKilled", 1), "oom", "most likely of a worker process"),
    (_with_termination("Error", 137), "killed", "without an OOM report"),
    (_with_termination("Error", 143), "killed", "SIGTERM"),
    (_with_termination("Error", 1), "error", "if this node is cgroup v1"),
    (_with_termination("Error", 1, (Path(__file__).parents[1] / "fixtures/nnunet_logs/shape_mismatch_fingerprint.log")
                       .read_text()[-2048:]), "error", "nnU-Net failed: ValueError: operands could not be broadcast"),
    (_with_termination("Error", 127, "exec: python3: not found"), "infra", "is --image an nnrun image"),
    (_with_termination("StartError", 128, "failed to create containerd task"), "infra", "StartError"),
    (_with_termination("Error", 137, None, {"reason": "Evicted",
                                            "message": "The node was low on resource: memory."}), "killed", "evicted"),
])
def test_termination_rules(pod, state, words):
    verdict = k8s_pods.classify_pod(k8s_pods.pod_record(pod))
    assert verdict.state == state and words in verdict.detail


def test_image_pull_failure_is_infra():
    pod = fixture("pod-pending.json")
    pod["status"]["containerStatuses"] = [{"name": "nnrun", "image": "nnrun:0.1.0", "imageID": "", "ready": False,
                                          "restartCount": 0, "started": False, "lastState": {},
                                          "state": {"waiting": {"reason": "ImagePullBackOff",
                                                                "message": "Back-off pulling image \"nnrun:0.1.0\""}}}]
    assert isinstance(k8s_jobs.deserialize(pod, "V1Pod"), k8s_client.V1Pod)
    assert k8s_pods.classify_pod(k8s_pods.pod_record(pod)).state == "infra"


# -- diagnosis -----------------------------------------------------------------------------------

def test_diagnosis_per_index_of_the_list():
    pods, ignored = k8s_pods.parse_pods(list_pods())
    result = k8s_pods.diagnose(pods)
    assert ignored == 0
    assert result.outcome is Outcome.OOM and result.exit_code == EXIT_CODES[Outcome.OOM]
    assert not result.complete                       # shard 2 is still pending
    rows = {(e.pod.role, e.pod.index): e.verdict.state for e in result.entries}
    assert rows == {("plan", None): "ok", ("shards", 0): "ok", ("shards", 1): "oom", ("shards", 2): "pending",
                    ("shards", 3): "error"}
    data = result.to_json()
    assert data["oom_shards"] == [1] and data["failed_shards"] == [1, 3]
    assert data["exit_code"] == 3 and data["outcome"] == "oom"
    assert "shard 1 OOM-killed under a 2 GiB memory limit" in result.message
    assert "shard 3 failed" in result.message


def test_resubmit_only_the_oom_killed_shards_with_more_memory(capsys):
    result = k8s_pods.diagnose(k8s_pods.parse_pods(list_pods())[0])
    oom, other = result.resubmit
    assert oom.shards == [1] and other.shards == [3]
    assert oom.mem == format_mem_arg(math.ceil(2 * GIB * 1.5)) == "3072m"
    assert other.mem == "2g"                    # the failed shard: the memory it had
    original = json.loads(fixture("pod-oomkilled.json")["metadata"]["annotations"][k8s_names.ANNOTATION_ARGV])
    assert oom.argv[:3] == ["nnrun", "k8s", "manifest"]
    assert oom.argv[oom.argv.index("--mem") + 1] == "3072m" and oom.argv.count("--mem") == 1
    assert oom.argv[oom.argv.index("--only-shards") + 1] == "1"
    assert [a for a in oom.argv if a not in ("--mem", "3072m", "--only-shards", "1")] == \
        [a for a in original if a not in ("--mem", "2g")]
    assert oom.command.endswith("--mem 3072m --only-shards 1 | kubectl apply -f -")
    # The command really renders the resubmission: one index, shard 1 of 4, a 3 GiB limit.
    code = cli.main(oom.argv[1:])
    out, err = capsys.readouterr()
    assert code == 0, err
    [job] = list(yaml.safe_load_all(out))
    assert job["spec"]["completions"] == 1
    assert env_of(job)[SHARD_LIST_ENV]["value"] == "1"
    assert container_of(job)["resources"]["limits"]["memory"] == "3Gi"


def test_a_later_resubmitted_pod_replaces_the_failed_shard():
    listing = list_pods()
    retry = copy.deepcopy(fixture("pod-completed.json"))
    retry_job = "nnrun-d501-shards-1-m3072"
    meta = retry["metadata"]
    meta.update(name=f"{retry_job}-0-aaaaa", creationTimestamp="2026-11-25T11:00:00Z")
    for key in ("batch.kubernetes.io/job-name", "job-name"):
        meta["labels"][key] = retry_job
    meta["labels"][k8s_names.COMPLETION_INDEX_KEY] = meta["annotations"][k8s_names.COMPLETION_INDEX_KEY] = "0"
    retry["spec"]["containers"][0]["env"].append({"name": SHARD_LIST_ENV, "value": "1"})
    listing["items"].append(retry)
    result = k8s_pods.diagnose(k8s_pods.parse_pods(listing)[0])
    assert [e.pod.shard for e in result.entries if e.pod.job == retry_job] == [1]
    superseded = [e.pod.name for e in result.entries if e.superseded]
    assert superseded == ["nnrun-d501-shards-1-m4dqz"]
    # Shard 1 is fine now; shard 3's error is what remains.
    assert result.outcome is Outcome.ERROR and result.exit_code == EXIT_CODES[Outcome.ERROR]
    assert [r.shards for r in result.resubmit] == [[3]]


@pytest.mark.parametrize("names, outcome", [
    (["pod-completed.json"], Outcome.OK),
    (["pod-completed.json", "pod-pending.json"], Outcome.OK),
    (["pod-completed.json", "pod-error.json"], Outcome.ERROR),
    (["pod-error.json", "pod-oomkilled.json"], Outcome.OOM),
])
def test_the_worst_outcome_decides_the_exit_code(names, outcome):
    pods = [k8s_pods.pod_record(fixture(n)) for n in names]
    result = k8s_pods.diagnose(pods)
    assert result.outcome is outcome and result.exit_code == EXIT_CODES[outcome]


def test_killed_beats_nothing_but_not_an_error():
    killed = k8s_pods.pod_record(_with_termination("Error", 143))
    ok = k8s_pods.pod_record(fixture("pod-completed.json"))
    assert k8s_pods.diagnose([ok, killed]).exit_code == EXIT_CODES[Outcome.KILLED]
    error = replace(k8s_pods.pod_record(fixture("pod-error.json")), index=0, shard=0, created="2026-11-25T12:00:00Z")
    assert k8s_pods.diagnose([killed, error]).outcome is Outcome.ERROR


def test_shard_map_lists_the_cases_of_failed_shards():
    cases = {f"case{i:03d}": 100 - i for i in range(10)}
    shard_map = build_map(cases, 4, "nnUNetPlans", "voxels")
    result = k8s_pods.diagnose(k8s_pods.parse_pods(list_pods())[0], shard_map)
    got = {e.pod.shard: e.cases for e in result.entries if e.pod.shard is not None}
    assert got == {k: cases_of(shard_map, k) for k in range(4)}
    assert all(got.values())
    with pytest.raises(BadInputError, match="3 shards"):
        k8s_pods.diagnose(k8s_pods.parse_pods(list_pods())[0], build_map(cases, 3, "nnUNetPlans", "voxels"))


@pytest.mark.parametrize("document, words", [
    ([], "not a Pod or a List"),
    ({"kind": "Job", "metadata": {"name": "x"}}, "not a Pod or a List"),
    ({"kind": "List", "items": [{"kind": "Job", "metadata": {"name": "j"}}]}, "item 0 of the list is not a Pod"),
    ({"kind": "List", "items": []}, "holds no pods"),
    ({"kind": "List", "items": [{"kind": "Pod", "metadata": {"name": "web-1"}, "spec": {}, "status": {}}]},
     "belongs to a Job"),
    ({"kind": "List", "items": ["pod"]}, "not a Pod"),
])
def test_bad_pod_documents(document, words):
    with pytest.raises(BadInputError, match=re.escape(words)):
        k8s_pods.parse_pods(document)


# -- the CLI -------------------------------------------------------------------------------------

def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_diagnose_text_and_json(capsys):
    code, out, err = run(["k8s", "diagnose", str(FIXTURES / "pods-list.json"), "--json"], capsys)
    assert code == 3
    assert err.startswith("nnrun: oom (out of memory): Dataset501_Demo: shard 1 OOM-killed")
    assert "--only-shards 1" in err and "index 3" in err
    data = json.loads(out)
    assert out.count("\n") == 1 and data["exit_code"] == 3 and data["oom_shards"] == [1]
    assert [r["shards"] for r in data["resubmit"]] == [[1], [3]]


def test_cli_diagnose_reads_stdin_and_a_shard_map(capsys, monkeypatch, tmp_path):
    import io
    shard_map = build_map({f"case{i}": i for i in range(8)}, 4, "nnUNetPlans", "voxels")
    path = tmp_path / "shards.nnUNetPlans.json"
    path.write_text(json.dumps(shard_map))
    monkeypatch.setattr(sys, "stdin", io.StringIO((FIXTURES / "pod-oomkilled.json").read_text()))
    code, out, err = run(["k8s", "diagnose", "-", "--shard-map", str(path)], capsys)
    assert code == 3 and err == ""                               # the diagnosis is the result: stdout
    assert f"cases: {', '.join(cases_of(shard_map, 1))}" in out


def test_cli_diagnose_ok_exit_zero(capsys):
    code, out, err = run(["k8s", "diagnose", str(FIXTURES / "pod-completed.json")], capsys)
    assert code == 0 and out.startswith("nnrun: ok:") and err == ""


@pytest.mark.parametrize("content, words", [
    (None, "cannot read"),
    ("{not json", "is not JSON"),
    ('{"kind": "Job", "metadata": {"name": "x"}}', "not a Pod or a List"),
    ('{"kind": "List", "items": []}', "holds no pods"),
])
def test_cli_diagnose_bad_input_is_one_line_exit_2(content, words, capsys, tmp_path):
    path = tmp_path / "pods.json"
    if content is not None:
        path.write_text(content)
    code, out, err = run(["k8s", "diagnose", str(path)], capsys)
    assert code == EXIT_CODES[Outcome.BAD_INPUT] and out == ""
    assert err.count("\n") == 1 and err.startswith("nnrun: bad_input: ") and words in err
    code, out, err = run(["k8s", "diagnose", str(path), "--json"], capsys)
    assert code == 2 and json.loads(out) == {"outcome": "bad_input", "message": json.loads(out)["message"],
                                             "exit_code": 2}


def test_cli_diagnose_missing_shard_map(capsys, tmp_path):
    code, out, err = run(["k8s", "diagnose", str(FIXTURES / "pod-oomkilled.json"), "--shard-map",
                          str(tmp_path / "none.json")], capsys)
    assert code == 2 and err.count("\n") == 1 and "no shard map" in err


def test_cli_diagnose_as_a_process_no_traceback(tmp_path):
    path = tmp_path / "pods.json"
    path.write_text("garbage")
    done = subprocess.run([sys.executable, "-m", "runner.cli", "k8s", "diagnose", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr and "is not JSON" in done.stderr


def test_cli_manifest_reads_the_dataset_from_a_local_raw_folder(capsys, tiny_raw, tmp_path):
    target = tmp_path / "jobs.yaml"
    code, out, err = run(["k8s", "manifest", "-d", "501", "--mem", "1g", "--shards", "2", "--raw", str(tiny_raw),
                          "--raw-claim", "raw", "--preprocessed-host-path", "/srv/pre", "-c", "3d_fullres",
                          "-o", str(target)], capsys)
    assert code == 0, err
    assert out == "" and "nnrun-d501-plan, nnrun-d501-shards" in err
    docs = list(yaml.safe_load_all(target.read_text()))
    assert [d["kind"] for d in docs] == ["Job", "Job"]
    assert env_of(docs[1])["NNRUN_FILE_ENDING"]["value"] == ".nii.gz"
    assert docs[1]["metadata"]["labels"][k8s_names.LABEL_DATASET] == "Dataset501_Tiny"


def test_cli_manifest_parts_and_json(capsys):
    common = ["k8s", "manifest", "-d", DATASET, "--file-ending", ".nii.gz", "--mem", "2g", "--shards", "3",
              "--raw-claim", "r", "--preprocessed-claim", "p"]
    code, out, _ = run(common + ["--job", "plan"], capsys)
    assert code == 0 and [d["metadata"]["name"] for d in yaml.safe_load_all(out)] == ["nnrun-d501-plan"]
    code, out, _ = run(common + ["--job", "shards", "--json"], capsys)
    listing = json.loads(out)
    assert code == 0 and [i["metadata"]["name"] for i in listing["items"]] == ["nnrun-d501-shards"]


@pytest.mark.parametrize("extra, words", [
    (["--raw-claim", "r", "--raw-host-path", "/r", "--preprocessed-claim", "p"], "exactly one of --raw-claim"),
    (["--preprocessed-claim", "p"], "exactly one of --raw-claim"),
    (["--raw-claim", "r", "--preprocessed-claim", "p", "--only-shards", "1,x"], "--only-shards"),
    (["--raw-claim", "r", "--preprocessed-claim", "p", "--only-shards", "5"], "not between 0 and 3"),
    (["--raw-claim", "r", "--preprocessed-claim", "p", "--run-as", "me"], "--run-as"),
    (["--raw-claim", "r", "--preprocessed-claim", "p", "--mem", "lots"], "--mem"),
])
def test_cli_manifest_bad_input_is_one_line_exit_2(extra, words, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    argv = ["k8s", "manifest", "-d", DATASET, "--file-ending", ".nii.gz", "--mem", "2g", "--shards", "4", *extra]
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("nnrun: bad_input: ") and words in err


def test_cli_manifest_needs_the_dataset_name_somehow(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    argv = ["k8s", "manifest", "-d", "501", "--mem", "2g", "--shards", "2", "--raw-claim", "r",
            "--preprocessed-claim", "p"]
    code, out, err = run(argv, capsys)
    assert code == 2 and "--dataset-name and --file-ending" in err and err.count("\n") == 1
    code, out, err = run(argv + ["--raw", str(tmp_path)], capsys)       # a raw folder without the dataset
    assert code == 2 and "no dataset with id 501" in err and "--dataset-name" in err
