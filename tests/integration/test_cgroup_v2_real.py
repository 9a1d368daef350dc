"""The OOM contract on a real cgroup v2 machine: a Debian bookworm guest booted under QEMU (marker ``cgroup_v2``).

One boot per session runs every scenario (tests/integration/cgv2/payload.sh):
nnrun's CLI and supervisor against the guest's Docker (systemd driver, then the
cgroupfs driver), ``--runtime host`` inside ``systemd-run --scope -p MemoryMax``,
rootless Podman as a non-root user, and ``nnrun doctor``.  Each test below checks
one scenario's JSON report as the guest wrote it.  nnU-Net is a stand-in with
nnU-Net's pool (spawned workers, one task per case, "6 feet under" on a dead
worker; tests/integration/cgv2/fake_nnunetv2) so each case takes seconds under
emulation; the kills are the guest kernel's.  Skipped only where QEMU cannot run.
"""
from __future__ import annotations

import json
import sys

import pytest

from tests.integration import cgroup_v2_guest as guest_mod

pytestmark = [pytest.mark.cgroup_v2]


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    reason = guest_mod.unavailable_reason()
    if reason:
        pytest.skip(f"no cgroup v2 guest: {reason}")
    share = tmp_path_factory.mktemp("cgv2-share")
    run = guest_mod.run_guest(share)
    print(f"cgroup v2 guest timings: {json.dumps(run.timings)}", file=sys.stderr)
    (share / "timings.json").write_text(json.dumps(run.timings))
    return run


def _show(run, name: str) -> str:
    return (f"{name}: report={json.dumps(run.report(name))[:1500]} meta={run.meta(name)}\n"
            f"payload log tail:\n{run.payload_log[-2500:]}\nconsole tail:\n{run.console_tail[-1500:]}")


def test_the_guest_is_cgroup_v2_and_ran_the_whole_payload(guest):
    assert guest.meta("guest").get("cgroup_fs") == "cgroup2fs", _show(guest, "guest")
    assert "memory" in guest.meta("guest").get("controllers", ""), _show(guest, "guest")
    assert guest.meta("docker_setup").get("cgroup_version") == 2, _show(guest, "docker_setup")
    assert "done" in {k[: -len(".meta")] for k in guest.results if k.endswith(".meta")}, _show(guest, "done")


def test_doctor_reports_cgroup_v2_and_its_oom_probe_passes(guest):
    report = guest.report("doctor")
    checks = {c["name"]: c for c in report.get("checks", [])}
    assert "cgroup" in checks and "oom probe" in checks, _show(guest, "doctor")
    cgroup = checks["cgroup"]
    assert cgroup["status"] == "ok", _show(guest, "doctor")
    assert cgroup["data"]["engine_cgroup_version"] == 2 and cgroup["data"]["host_cgroup_version"] == 2, \
        _show(guest, "doctor")
    assert checks["oom probe"]["status"] == "ok", _show(guest, "doctor")


def _assert_ok(run, name: str) -> None:
    report = run.report(name)
    assert report.get("outcome") == "ok" and run.meta(name).get("exit_code") == 0, _show(run, name)


def _assert_worker_oom(run, name: str) -> None:
    report = run.report(name)
    assert report.get("outcome") == "oom" and run.meta(name).get("exit_code") == 3, _show(run, name)
    assert report.get("victim") == "worker", _show(run, name)
    assert report.get("victim_case") == "case001", _show(run, name)
    assert report.get("oom_source") == "cgroup", _show(run, name)
    assert report.get("phase") == "fingerprint", _show(run, name)


def _assert_main_oom(run, name: str) -> None:
    report = run.report(name)
    assert report.get("outcome") == "oom" and run.meta(name).get("exit_code") == 3, _show(run, name)
    assert report.get("victim") == "main", _show(run, name)
    assert report.get("oom_source") == "cgroup", _show(run, name)


def test_ok(guest):
    """Once, under the systemd driver: the cgroupfs driver runs the OOM scenarios, where the drivers differ."""
    assert guest.meta("ok").get("driver") == "systemd", _show(guest, "ok")
    _assert_ok(guest, "ok")


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
def test_worker_oom_names_the_worker_and_its_case(guest, driver):
    name = "worker_oom" if driver == "systemd" else "worker_oom_cgroupfs"
    assert guest.meta(name).get("driver") == driver, _show(guest, name)
    _assert_worker_oom(guest, name)


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
def test_main_process_oom_is_told_by_the_kernel_counter(guest, driver):
    name = "main_oom" if driver == "systemd" else "main_oom_cgroupfs"
    assert guest.meta(name).get("driver") == driver, _show(guest, name)
    _assert_main_oom(guest, name)


def test_the_container_cgroup_is_gone_after_its_pid1_exits(guest):
    """Why nnrun's supervisor is PID 1 and reads the counters before it exits."""
    meta = guest.meta("cgroup_dir_after_exit")
    assert meta.get("dir_while_running"), _show(guest, "cgroup_dir_after_exit")
    assert meta.get("exists_after_exit") is False, _show(guest, "cgroup_dir_after_exit")


def test_docker_kill_is_killed_not_oom(guest):
    report = guest.report("docker_kill")
    assert guest.meta("docker_kill").get("killed_container") not in (None, "none"), _show(guest, "docker_kill")
    assert report.get("outcome") == "killed" and guest.meta("docker_kill").get("exit_code") == 5, \
        _show(guest, "docker_kill")


def test_a_worker_killed_without_the_oom_killer_is_not_oom(guest):
    report = guest.report("worker_killed")
    assert report.get("outcome") not in (None, "oom", "ok"), _show(guest, "worker_killed")
    assert report.get("outcome") == "killed", _show(guest, "worker_killed")


def test_host_runtime_in_a_systemd_scope_with_memory_max(guest):
    """A scope's default OOMPolicy=stop SIGTERMs every process of the scope right after the kernel's kill
    (nnrun, the supervisor and nnU-Net's main process within milliseconds): still oom from the counter,
    the worker named as the victim and its case in flight, no retry, exit 3."""
    name = "host_scope_oom"
    report = guest.report(name)
    assert report.get("outcome") == "oom" and guest.meta(name).get("exit_code") == 3, _show(guest, name)
    assert report.get("oom_source") == "cgroup" and report.get("oom_kills") == 1, _show(guest, name)
    assert report.get("victim") == "worker", _show(guest, name)
    assert "case001" in ([report.get("victim_case")] + list(report.get("cases_in_flight") or [])), _show(guest, name)
    assert report.get("phase") == "fingerprint" and len(report.get("attempts") or [None]) == 1, _show(guest, name)


@pytest.mark.skipif(not guest_mod.PODMAN, reason="NNRUN_CGV2_PODMAN=0: rootless Podman left out of the guest's run")
def test_rootless_podman_ok_and_worker_oom(guest):
    """As a non-root user (lingering systemd user instance, cgroups delegated as Debian sets it): the container
    runs as uid 0 of its user namespace, i.e. the caller (any other uid could not write the caller's folders,
    see podman_probe.txt in the results), and the kill is still told from the cgroup's counter."""
    setup = guest.meta("podman_setup")
    assert "rootless=true" in str(setup.get("info")), _show(guest, "podman_setup")
    _assert_ok(guest, "podman_ok")
    _assert_worker_oom(guest, "podman_worker_oom")
