"""Podman behind the engine module, without Podman: a fake Docker-compatible API on a unix socket.

The fake answers /_ping, /version, /info, /images/.../json,
/containers/create and /containers/<id>/json the way Podman 4.3 (or Docker) does, and records the
create body, so the tests see exactly what nnrun sends each engine.
"""
from __future__ import annotations

import http.server
import json
import socket
import socketserver
import threading
from pathlib import Path

import pytest

from runner.cli import app as cli
from runner.engines.base import ContainerSpec
from runner.engines.docker import (
    NNRUN_PODMAN_SOCKET,
    PODMAN_HOST_ENV,
    PODMAN_NOFILE,
    DockerEngine,
    _is_oom_event,
    engine_factory,
    host_config_kwargs,
    is_podman,
    podman_base_url,
    podman_kwargs,
    podman_socket_candidates,
)
from runner.errors import BadInputError, InfraError

PODMAN_VERSION = {  # Podman 4.3.1's /version, shortened (Debian 12)
    "Platform": {"Name": "linux/amd64/debian-12"},
    "Components": [{"Name": "Podman Engine", "Version": "4.3.1"}, {"Name": "Conmon", "Version": "2.1.6"},
                   {"Name": "OCI Runtime (runc)", "Version": "runc version 1.1.5"}],
    "Version": "4.3.1", "ApiVersion": "1.41", "MinAPIVersion": "1.24", "Os": "linux", "Arch": "amd64",
}
DOCKER_VERSION = {
    "Platform": {"Name": ""},
    "Components": [{"Name": "Engine", "Version": "20.10.24+dfsg1"}, {"Name": "containerd"}, {"Name": "runc"}],
    "Version": "20.10.24+dfsg1", "ApiVersion": "1.41", "MinAPIVersion": "1.12", "Os": "linux", "Arch": "amd64",
}
INFO = {"MemTotal": 8 << 30, "CgroupVersion": "1", "CgroupDriver": "cgroupfs", "KernelVersion": "6.1.0"}
CID = "a" * 64


class FakeApi(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, version: dict, rootless: bool | None = None):
        # rootless: what Podman's own /libpod/info says (None: no such endpoint, as Docker)
        self.version, self.created, self.rootless = version, [], rootless
        super().__init__(path, _Handler)

    def server_bind(self):  # UnixStreamServer + BaseHTTPRequestHandler want a (host, port)
        socketserver.UnixStreamServer.server_bind(self)
        self.server_name, self.server_port = "localhost", 0


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def address_string(self):
        return "fake"

    def log_message(self, *args):
        pass

    def _send(self, code: int, body) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json" if not isinstance(body, bytes) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self):
        self._send(200, b"OK")

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path.endswith("/_ping"):
            return self._send(200, b"OK")
        if path.endswith("/version"):
            return self._send(200, self.server.version)
        if path.endswith("/libpod/info"):
            if self.server.rootless is None:
                return self._send(404, {"message": "page not found"})
            return self._send(200, {"host": {"security": {"rootless": self.server.rootless}}})
        if path.endswith("/info"):
            return self._send(200, INFO)
        if "/images/" in path and path.endswith("/json"):
            if "missing" in path:
                return self._send(404, {"message": "failed to find image: No such image"})
            return self._send(200, {"Id": "sha256:" + "b" * 64, "Config": {"Labels": {"io.nnrun.version": "x"}},
                                    "RepoDigests": []})
        if path.endswith(f"/containers/{CID}/json"):      # containers.create reads the new container back
            return self._send(200, {"Id": CID, "State": {"Status": "created"}, "Config": {}})
        return self._send(404, {"message": f"no route {path}"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?", 1)[0].endswith("/containers/create"):
            self.server.created.append(json.loads(body or b"{}"))
            return self._send(201, {"Id": CID, "Warnings": []})
        return self._send(404, {"message": "no route"})


@pytest.fixture
def fake_api(tmp_path):
    servers = []

    def start(version: dict, rootless: bool | None = None) -> tuple[str, FakeApi]:
        path = str(tmp_path / f"api{len(servers)}.sock")
        server = FakeApi(path, version, rootless)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"unix://{path}", server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _spec(**kw) -> ContainerSpec:
    return ContainerSpec(image="nnrun:test", command=["--run-dir", "/nnrun/run"], mem_limit_bytes=1 << 30, **kw)


# --------------------------------------------------------------------------- pure parts

def test_podman_is_told_apart_by_its_version_components():
    assert is_podman(PODMAN_VERSION)
    assert not is_podman(DOCKER_VERSION)
    assert is_podman({"Platform": {"Name": "Podman Engine"}})
    assert not is_podman({})


def test_podman_create_arguments_add_only_rlimits_it_can_set():
    spec = _spec()
    docker_kw, podman_kw = host_config_kwargs(spec), host_config_kwargs(spec, engine="podman")
    assert "ulimits" not in docker_kw
    assert {k: v for k, v in podman_kw.items() if k != "ulimits"} == docker_kw
    limits = {u["name"]: (u["soft"], u["hard"]) for u in podman_kw["ulimits"]}
    assert limits["nofile"] == (PODMAN_NOFILE, PODMAN_NOFILE)
    assert limits["nproc"][0] == limits["nproc"][1] >= spec.pids_limit
    # nproc (tasks per uid) always stays above the pids cgroup limit, whatever it is.
    big = podman_kwargs(pids_limit=50_000)["ulimits"]
    assert next(u for u in big if u["name"] == "nproc")["hard"] >= 50_000


def test_podman_socket_from_env_then_standard_places(tmp_path):
    assert podman_base_url({PODMAN_HOST_ENV: "unix:///x.sock"}) == "unix:///x.sock"
    run = tmp_path / "run"
    (run / "podman").mkdir(parents=True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(run / "podman" / "podman.sock"))
    try:
        # Not root: the rootless service of $XDG_RUNTIME_DIR comes first.
        assert podman_base_url({"XDG_RUNTIME_DIR": str(run)}, uid=1234) == f"unix://{run}/podman/podman.sock"
    finally:
        sock.close()
    assert podman_socket_candidates(0, {})[0] == NNRUN_PODMAN_SOCKET
    assert podman_socket_candidates(1234, {})[0] == "/run/user/1234/podman/podman.sock"
    nothing = {"XDG_RUNTIME_DIR": str(tmp_path / "none")}
    if not any(Path(p).is_socket() for p in podman_socket_candidates(1234, nothing)):
        assert podman_base_url(nothing, uid=1234) == f"unix://{tmp_path / 'none'}/podman/podman.sock"


def test_engine_factory(monkeypatch):
    assert engine_factory(None) is DockerEngine and engine_factory("docker") is DockerEngine
    monkeypatch.setenv(PODMAN_HOST_ENV, "unix:///somewhere/podman.sock")
    engine = engine_factory("podman")()
    assert engine.base_url == "unix:///somewhere/podman.sock" and engine.expect == "podman"
    with pytest.raises(BadInputError, match="--runtime must be one of docker, podman"):
        engine_factory("lxc")


def test_oom_events_are_counted_only_for_this_container():
    assert _is_oom_event({"status": "oom", "id": CID}, CID)
    assert _is_oom_event({"Action": "oom", "Actor": {"ID": CID}}, CID)
    assert _is_oom_event({"Action": "oom"}, CID)                  # no id: the filter did its job
    assert not _is_oom_event({"status": "die", "id": CID}, CID)
    assert not _is_oom_event({"status": "oom", "id": "b" * 64}, CID)
    assert not _is_oom_event("oom", CID)


# --------------------------------------------------------------------------- against a fake API

def test_podman_behind_docker_host_is_detected_and_gets_its_rlimits(fake_api):
    url, server = fake_api(PODMAN_VERSION)
    engine = DockerEngine(base_url=url)               # what DOCKER_HOST=<podman socket> gives
    info = engine.info()
    assert info.name == "podman" and info.server_version == "4.3.1" and info.cgroup_version == 1
    assert engine.create(_spec()) == CID
    host = server.created[-1]["HostConfig"]
    assert host["Memory"] == host["MemorySwap"] == 1 << 30
    assert {u["Name"]: (u["Soft"], u["Hard"]) for u in host["Ulimits"]}["nofile"] == (PODMAN_NOFILE, PODMAN_NOFILE)


@pytest.mark.parametrize("rootless", [True, False, None])
def test_rootless_podman_runs_the_container_as_the_caller(fake_api, rootless):
    """Rootless Podman: uid 0 of the container's user namespace is the caller; uid 1000 there is a subuid
    that cannot write the caller's folders (the cgroup v2 guest's supervisor exited 1 with it)."""
    url, server = fake_api(PODMAN_VERSION, rootless=rootless)
    DockerEngine(base_url=url, expect="podman").create(_spec(user="1000:1000"))
    body = server.created[-1]
    assert body["User"] == ("0:0" if rootless else "1000:1000")
    assert body["HostConfig"]["CapDrop"] == ["ALL"] and body["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]


def test_docker_is_never_asked_for_rootless_podman(fake_api):
    url, server = fake_api(DOCKER_VERSION, rootless=True)
    DockerEngine(base_url=url).create(_spec(user="1000:1000"))
    assert server.created[-1]["User"] == "1000:1000"


def test_docker_gets_no_rlimits(fake_api):
    url, server = fake_api(DOCKER_VERSION)
    engine = DockerEngine(base_url=url)
    assert engine.info().name == "docker"
    engine.create(_spec())
    assert not server.created[-1]["HostConfig"].get("Ulimits")


def test_engine_podman_refuses_a_docker_daemon(fake_api):
    url, _ = fake_api(DOCKER_VERSION)
    with pytest.raises(InfraError, match="is docker, not podman") as caught:
        DockerEngine(base_url=url, expect="podman").info()
    assert "podman system service" in caught.value.hint and "NNRUN_PODMAN_HOST" in caught.value.hint


def test_podman_errors_name_podman_and_how_to_fill_its_store(fake_api, tmp_path):
    url, _ = fake_api(PODMAN_VERSION)
    with pytest.raises(InfraError, match="not found in Podman's image store") as caught:
        DockerEngine(base_url=url, expect="podman").image("nnrun:missing")
    assert "podman load" in caught.value.hint
    with pytest.raises(InfraError, match="Podman service not reachable") as caught:
        DockerEngine(base_url=f"unix://{tmp_path}/none.sock", expect="podman").info()
    assert "podman system service" in caught.value.hint and "NNRUN_PODMAN_HOST" in caught.value.hint


# --------------------------------------------------------------------------- the CLI

def test_cli_unknown_engine_is_bad_input(tiny_raw, tmp_path, capsys):
    code = cli.main(["preprocess", "-d", "501", "--mem", "1g", "--raw", str(tiny_raw), "--preprocessed",
                     str(tmp_path / "pre"), "--engine", "lxc", "--json", "-q"])
    out, err = capsys.readouterr()
    assert code == 2 and json.loads(out)["outcome"] == "bad_input" and "docker, podman" in json.loads(out)["message"]


def test_cli_engine_podman_unreachable_is_infra(tiny_raw, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(PODMAN_HOST_ENV, f"unix://{tmp_path}/no-podman.sock")
    code = cli.main(["preprocess", "-d", "501", "--mem", "1g", "--raw", str(tiny_raw), "--preprocessed",
                     str(tmp_path / "pre"), "--engine", "podman", "--json", "-q"])
    out, _ = capsys.readouterr()
    data = json.loads(out)
    assert code == 6 and data["outcome"] == "infra" and "Podman service not reachable" in data["message"]
    assert "no-podman.sock" in data["message"]


def test_cli_engine_podman_is_passed_on_to_the_run_and_its_advice(fake_preprocess, tiny_raw, tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.setenv(PODMAN_HOST_ENV, "unix:///p.sock")
    code = cli.main(["preprocess", "-d", "501", "--mem", "1g", "--raw", str(tiny_raw), "--preprocessed",
                     str(tmp_path / "pre"), "--engine", "podman", "-q"])
    assert code == 0
    opts, settings, factory = fake_preprocess.calls[-1]
    assert settings.runtime == "podman"
    assert settings.passthrough_argv[settings.passthrough_argv.index("--runtime") + 1] == "podman"
    engine = factory()
    assert engine.expect == "podman" and engine.base_url == "unix:///p.sock"
