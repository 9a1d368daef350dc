"""DockerEngine.build_image / import_image / pull_image against a fake Docker API on a unix socket (no engine)."""
from __future__ import annotations

import http.server
import io
import json
import socketserver
import tarfile
import threading
import urllib.parse
from pathlib import Path

import pytest

from runner.engines.docker import DockerEngine, _split_ref
from runner.errors import InfraError

VERSION = {"Components": [{"Name": "Engine", "Version": "20.10.24"}], "Version": "20.10.24", "ApiVersion": "1.41",
           "MinAPIVersion": "1.12", "Platform": {"Name": ""}}
IMAGE_ID = "sha256:" + "c" * 64


class FakeApi(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, build_chunks: list[dict]):
        self.build_chunks = build_chunks
        self.requests: list[tuple[str, dict, bytes]] = []
        self.tags: dict[str, str] = {}
        super().__init__(path, _Handler)

    def server_bind(self):
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
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_chunked(self, pieces: list[bytes]) -> None:
        """A streamed answer, as the engine sends /build (one chunk per JSON object)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in pieces:
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_HEAD(self):
        self._send(200, b"OK")

    def do_GET(self):
        path = urllib.parse.unquote(self.path.split("?", 1)[0])
        if path.endswith("/_ping"):
            return self._send(200, b"OK")
        if path.endswith("/version"):
            return self._send(200, VERSION)
        if "/images/" in path and path.endswith("/json"):
            ref = path.split("/images/", 1)[1][: -len("/json")]
            if ref in self.server.tags or ref == IMAGE_ID:
                return self._send(200, {"Id": IMAGE_ID, "Config": {"Labels": {"io.nnrun.lock-digest": "sha256:x"}},
                                        "RepoDigests": []})
            return self._send(404, {"message": f"No such image: {ref}"})
        return self._send(404, {"message": f"no route {path}"})

    def do_POST(self):
        path, _, query = self.path.partition("?")
        params = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
        body = self._read_body()
        self.server.requests.append((path, params, body))
        if path.endswith("/build"):
            for chunk in self.server.build_chunks:
                if "aux" in chunk:
                    self.server.tags[params["t"]] = IMAGE_ID
            return self._send_chunked([json.dumps(c).encode() + b"\r\n" for c in self.server.build_chunks])
        if path.endswith("/images/create") and params.get("fromSrc") == "-":
            return self._send(200, json.dumps({"status": IMAGE_ID}).encode() + b"\r\n")
        if path.endswith("/images/create"):
            return self._send(500, {"message": "Get \"https://registry/v2/\": dial tcp: no such host"})
        if path.endswith("/tag"):
            self.server.tags[f"{params['repo']}:{params['tag']}"] = IMAGE_ID
            return self._send(201, b"")
        return self._send(404, {"message": "no route"})


@pytest.fixture
def fake_api(tmp_path):
    servers = []

    def start(chunks=()):
        path = str(tmp_path / f"api{len(servers)}.sock")
        server = FakeApi(path, list(chunks))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return DockerEngine(base_url=f"unix://{path}"), server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _context(tmp_path: Path) -> Path:
    context = tmp_path / "context"
    (context / "runner" / "image").mkdir(parents=True)
    (context / "runner" / "image" / "Dockerfile").write_text("FROM scratch\n")
    (context / "wheels").mkdir()
    (context / "wheels" / "a-1-py3-none-any.whl").write_bytes(b"wheel")
    return context


def test_build_streams_every_line_and_returns_the_image(fake_api, tmp_path):
    engine, server = fake_api([{"stream": "Step 1/2 : FROM scratch\n"}, {"stream": " ---> Using cache\n"},
                               {"aux": {"ID": IMAGE_ID}}, {"stream": "Successfully built cccccccccccc\n"}])
    lines: list[str] = []
    info = engine.build_image(_context(tmp_path), "runner/image/Dockerfile", "nnrun-test:1",
                              {"LOCK_DIGEST": "sha256:x"}, {}, lines.append)
    assert info.image_id == IMAGE_ID and info.labels == {"io.nnrun.lock-digest": "sha256:x"}
    assert lines == ["Step 1/2 : FROM scratch", " ---> Using cache", "Successfully built cccccccccccc"]
    path, params, body = server.requests[-1]
    assert params["t"] == "nnrun-test:1" and params["dockerfile"] == "runner/image/Dockerfile"
    assert json.loads(params["buildargs"]) == {"LOCK_DIGEST": "sha256:x"} and params["rm"] == "True"
    names = tarfile.open(fileobj=io.BytesIO(body)).getnames()
    assert "runner/image/Dockerfile" in names and "wheels/a-1-py3-none-any.whl" in names


def test_a_failed_step_is_infra_with_the_last_lines(fake_api, tmp_path):
    engine, _ = fake_api([{"stream": "Step 7/21 : RUN pip install ...\n"},
                          {"stream": "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n"},
                          {"errorDetail": {"message": "The command '/bin/sh -c ...' returned a non-zero code: 1"},
                           "error": "The command '/bin/sh -c ...' returned a non-zero code: 1"}])
    with pytest.raises(InfraError) as caught:
        engine.build_image(_context(tmp_path), "runner/image/Dockerfile", "nnrun-test:1", {}, {}, None)
    assert "could not build nnrun-test:1" in caught.value.message and "non-zero code: 1" in caught.value.message
    assert caught.value.output_tail[-1].startswith("ERROR: THESE PACKAGES DO NOT MATCH")


def test_import_tags_the_image_by_the_id_the_engine_answered(fake_api, tmp_path):
    """Podman 4.3 ignores the name given to an import: nnrun tags the id it answered."""
    engine, server = fake_api()
    tar = tmp_path / "rootfs.tar"
    tar.write_bytes(b"x" * 10)
    info = engine.import_image(tar, "nnrun-base:bookworm")
    assert info.image_id == IMAGE_ID and server.tags["nnrun-base:bookworm"] == IMAGE_ID
    create = next(r for r in server.requests if r[0].endswith("/images/create"))
    assert create[1]["fromSrc"] == "-" and create[2] == b"x" * 10


def test_pull_failure_is_infra_and_has_image(fake_api):
    engine, _ = fake_api()
    with pytest.raises(InfraError, match="pull python:3.11-slim"):
        engine.pull_image("python:3.11-slim", timeout_s=5)
    assert engine.has_image("python:3.11-slim") is False


@pytest.mark.parametrize("ref,split", [("nnrun:0.1.0", ("nnrun", "0.1.0")), ("nnrun", ("nnrun", "latest")),
                                       ("localhost:5000/a/b", ("localhost:5000/a/b", "latest")),
                                       ("localhost:5000/a/b:v1", ("localhost:5000/a/b", "v1"))])
def test_split_ref(ref, split):
    assert _split_ref(ref) == split
