"""nnrun doctor against the real Docker daemon and the real image: the probe really OOM-kills."""
from __future__ import annotations

import pytest

from runner.doctor import (
    FAIL,
    IMAGE_ADVICE,
    NAME_CGROUP,
    NAME_DAEMON,
    NAME_IMAGE,
    NAME_PROBE,
    OK,
    doctor_json,
    image_advice,
    render_doctor,
    run_checks,
)
from runner.engines.docker import DockerEngine

pytestmark = pytest.mark.docker


def test_doctor_real_daemon_and_probe(docker_ready, tmp_path):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    (raw / "Dataset501_Demo").mkdir(parents=True)
    pre.mkdir()
    report = run_checks(DockerEngine, docker_ready, raw, pre)
    text = render_doctor(report)
    print(text)
    daemon = report.check(NAME_DAEMON)
    assert daemon.status == OK, text
    assert daemon.data["engine"] in ("docker", "podman") and daemon.data["server_version"]
    cgroup = report.check(NAME_CGROUP)
    assert cgroup.status == OK, text
    assert cgroup.data["engine_cgroup_version"] == 1 and cgroup.data["host_cgroup_version"] == 1   # this machine
    assert report.check(NAME_IMAGE).status == OK, text
    probe = report.check(NAME_PROBE)
    assert probe.status == OK, text
    assert probe.data["enforced"] is True
    assert probe.data["oom_kill"] >= 1
    assert probe.data["child_exit_status"] == 137 and probe.data["container_exit_code"] == 137
    assert probe.data["run_id"].startswith("doctor-")
    assert report.ok and report.exit_code == 0 and doctor_json(report)["ok"] is True


def test_oom_probe_removes_its_container(docker_ready):
    result = DockerEngine().oom_probe(docker_ready, 64 * 1024 * 1024, timeout_s=60)
    assert result["container_exit_code"] == 137
    assert "oom_kill 1" in result["stdout"]
    left = DockerEngine().list_containers(f"io.nnrun.run-id={result['run_id']}")
    assert left == []


def test_oom_probe_small_allocation_is_not_killed(docker_ready):
    """The other side of the probe: an allocation under the cap runs to the end, no kill counted."""
    result = DockerEngine().oom_probe(docker_ready, 256 * 1024 * 1024, timeout_s=60, alloc_bytes=16 * 1024 * 1024)
    assert result["container_exit_code"] == 0, result
    assert "child_exit_status 0" in result["stdout"] and "oom_kill 0" in result["stdout"]


def test_doctor_unreachable_daemon(docker_ready, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    report = run_checks(DockerEngine, docker_ready, None, None)
    daemon = report.check(NAME_DAEMON)
    assert daemon.status == FAIL, render_doctor(report)
    assert "unix:///nonexistent.sock" in daemon.detail
    assert daemon.advice and "DOCKER_HOST" in daemon.advice
    assert report.exit_code == 6
    data = doctor_json(report)
    assert data["ok"] is False and data["exit_code"] == 6


def test_doctor_missing_image(docker_ready):
    report = run_checks(DockerEngine, "nnrun-doctor-test-no-such-image:0", None, None)
    image = report.check(NAME_IMAGE)
    assert image.status == FAIL and "not found" in image.detail
    assert image.advice == image_advice("nnrun-doctor-test-no-such-image:0") != IMAGE_ADVICE
    assert "`nnrun image build --tag nnrun-doctor-test-no-such-image:0`" in image.advice
    assert report.check(NAME_PROBE).status == FAIL
    assert report.exit_code == 6
