"""`nnrun preprocess` as a user sees it: a real run on the demo inside a real terminal (tmux, 80 columns).

Each test starts its own tmux server (a private socket), runs nnrun in an
80x50 window, captures the screen while nnU-Net runs (the live panel) and
after it has ended (``tmux capture-pane -p -J``: wrapped lines joined, so a
line the terminal had to wrap shows up wider than 80; ``-e`` keeps colour
escapes), and checks:

* nothing is wider than 80 columns, the live panel included;
* the final report is there and readable: the headline, the facts, the
  ``next:`` command wrapped with `` \\`` and equal, once joined, to the
  report's recommendation;
* colour escapes by default; none with ``NO_COLOR=1`` nor with ``--no-color``.

The run is the README's OOM example: four workers in 3d_fullres under
1500m, where a worker is OOM-killed (NNRUN_TEST_OOM_VICTIM=worker makes the
kernel pick a worker); its report has some of the longest lines, and the
temporary folders make its ``next:`` command longer than a line.  tmux is installed when
missing and this runs as root (scripts/setup.sh installs it too).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import IMAGE, REPO

pytestmark = pytest.mark.docker

WIDTH, HEIGHT = 80, 50
SGR = re.compile(r"\x1b\[([0-9;:]*)m")
ARGS = ["-c", "3d_fullres", "-np", "4", "-npfp", "1", "--mem", "1500m"]


def _colour_params(params: str) -> bool:
    """Whether SGR parameters set a colour (30-37, 38;..., 40-47, 48;..., 90-97, 100-107) or bold/dim/italic."""
    codes = [int(p) for p in re.split(r"[;:]", params) if p.isdigit()]
    return any(c in (1, 2, 3) or 30 <= c <= 38 or 40 <= c <= 48 or 90 <= c <= 97 or 100 <= c <= 107 for c in codes)


def coloured(text: str) -> bool:
    return any(_colour_params(m.group(1)) for m in SGR.finditer(text))


@pytest.fixture(scope="session")
def tmux() -> str:
    found = shutil.which("tmux")
    if found is None and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "tmux"]
        if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=600)
        found = shutil.which("tmux")
    if found is None:
        pytest.skip("tmux is not installed (as root, scripts/setup.sh or this test installs it)")
    return found


class Terminal:
    """One tmux server and window of WIDTH x HEIGHT running one command."""

    def __init__(self, tmux: str, tmp: Path) -> None:
        self.tmux = tmux
        self.socket = f"nnrun-test-{uuid.uuid4().hex[:8]}"
        self.exit_file = tmp / "exit-code"

    def _cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([self.tmux, "-L", self.socket, "-f", "/dev/null", *args], capture_output=True,
                              text=True, check=check, timeout=60)

    def start(self, command: str) -> None:
        wrapped = f"{command}; echo $? > {shlex.quote(str(self.exit_file))}"
        self._cmd("new-session", "-d", "-s", "t", "-x", str(WIDTH), "-y", str(HEIGHT), "bash", "--norc", "--noprofile",
                  "-c", wrapped)
        self._cmd("set-option", "-t", "t", "remain-on-exit", "on")
        self._cmd("set-option", "-t", "t", "history-limit", "5000")
        self.socket_path = self._cmd("display-message", "-p", "-t", "t", "#{socket_path}").stdout.strip()

    def capture(self, colour: bool = False, history: bool = True) -> str:
        args = ["capture-pane", "-p", "-J", "-t", "t"]
        if history:
            args += ["-S", "-", "-E", "-"]
        if colour:
            args.append("-e")
        return self._cmd(*args).stdout

    def width(self) -> int:
        return int(self._cmd("display-message", "-p", "-t", "t", "#{window_width}").stdout.strip())

    def wait(self, timeout: float = 600, every: float = 0.5) -> tuple[int, list[str]]:
        """The exit code, and the screens captured while the command ran."""
        screens = []
        deadline = time.monotonic() + timeout
        while not self.exit_file.exists() or not self.exit_file.read_text().strip():
            assert time.monotonic() < deadline, "nnrun did not end in time:\n" + self.capture()
            screens.append(self.capture(colour=True, history=False))
            time.sleep(every)
        return int(self.exit_file.read_text()), screens

    def close(self) -> None:
        self._cmd("kill-server", check=False)
        if getattr(self, "socket_path", ""):
            Path(self.socket_path).unlink(missing_ok=True)       # tmux leaves its socket file behind


def run_in_terminal(tmux: str, tmp: Path, demo_raw: Path, *extra: str, env: dict | None = None):
    # Folders with paths of a user's length: nnrun wraps the `next:` command between shell words, never inside
    # one, and pytest's own tmp paths (60+ characters) would be a word longer than the 80-column line allows.
    short = Path(tempfile.mkdtemp(prefix="nnt-", dir="/tmp"))
    try:
        return _run_in_terminal(tmux, tmp, short, demo_raw, *extra, env=env)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _run_in_terminal(tmux: str, tmp: Path, short: Path, demo_raw: Path, *extra: str, env: dict | None = None):
    raw = short / "raw"
    shutil.copytree(demo_raw, raw)
    demo_raw = raw
    pre = short / "pre"
    pre.mkdir()
    settings = {"NNRUN_TEST_OOM_VICTIM": "worker", "TERM": "xterm-256color", "COLUMNS": None, "LINES": None,
                "NO_COLOR": None, "FORCE_COLOR": None, **(env or {})}
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in settings.items() if v is not None)
    unset = " ".join(f"-u {k}" for k, v in settings.items() if v is None)
    argv = [sys.executable, "-m", "runner.cli", "preprocess", "-d", "501", "--image", IMAGE, "--raw", str(demo_raw),
            "--preprocessed", str(pre), *ARGS, *extra]
    command = f"cd {shlex.quote(str(REPO))} && env {unset} {assignments} {shlex.join(argv)}"
    term = Terminal(tmux, tmp)
    term.start(command)
    try:
        assert term.width() == WIDTH
        code, screens = term.wait()
        plain, escaped = term.capture(), term.capture(colour=True)
    finally:
        term.close()
    (report_file,) = pre.glob("Dataset501_Demo/.nnrun/runs/*/report.json")
    (tmp / "screen.txt").write_text(plain)          # kept for a human: pytest's tmp folder
    (tmp / "screen-escaped.txt").write_text(escaped)
    panels = [screen for screen in screens if "memory" in screen and "cap" in screen]
    if panels:
        (tmp / "panel-escaped.txt").write_text(panels[-1])
    return code, screens, plain, escaped, json.loads(report_file.read_text())


def check_screen(code: int, screens: list[str], plain: str, report: dict) -> None:
    assert code == 3 == report["exit_code"], plain
    # Nothing wider than the terminal: while it ran (the live panel) and at the end (-J joins wrapped lines).
    for screen in [*(SGR.sub("", s) for s in screens), plain]:
        wide = [line for line in screen.splitlines() if len(line.rstrip()) > WIDTH]
        assert not wide, "lines wider than the terminal (the terminal wrapped them):\n" + "\n".join(wide)
    assert any("memory" in s and "cap" in s for s in screens), "the live panel was never seen:\n" + "\n----\n".join(
        screens[-3:])
    # The final report, readable: the headline, the facts, the command to run next.
    lines = plain.rstrip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("nnrun: oom (out of memory): the kernel"))
    body = lines[start:]
    assert "OOM-killed" in body[0]
    for label in ("phase:", "killed:", "OOM kills:", "memory cap:", "peak anon:", "nnU-Net log:", "next:"):
        assert any(line.startswith(f"  {label}") for line in body), (label, "\n".join(body))
    for line in body:
        label = line[:16]
        if label.strip().endswith(":") and line.startswith("  ") and len(line) > 16:
            assert line[16] != " ", f"a value out of its column: {line!r}"
    first = next(i for i, line in enumerate(body) if line.startswith("  next:"))
    command = [body[first][16:]]
    while command[-1].endswith(" \\"):
        command.append(body[first + len(command)].strip())
    assert " ".join(part.removesuffix(" \\") for part in command) == report["recommendation"]
    assert "Traceback" not in plain


def test_colour_on_an_80_column_terminal(tmux, docker_ready, demo_raw, tmp_path):
    code, screens, plain, escaped, report = run_in_terminal(tmux, tmp_path, demo_raw)
    check_screen(code, screens, plain, report)
    assert coloured(escaped), "no colour escapes on a terminal"
    assert any(coloured(screen) for screen in screens if "memory" in screen), "the live panel has no colour"
    # The headline's outcome is the coloured part.
    headline = next(line for line in escaped.splitlines() if "the kernel OOM-killed" in line and "nnrun" in line)
    assert coloured(headline)


@pytest.mark.parametrize(("extra", "env"), [((), {"NO_COLOR": "1"}), (("--no-color",), {})],
                         ids=["NO_COLOR=1", "--no-color"])
def test_no_colour_on_an_80_column_terminal(tmux, docker_ready, demo_raw, tmp_path, extra, env):
    code, screens, plain, escaped, report = run_in_terminal(tmux, tmp_path, demo_raw, *extra, env=env)
    check_screen(code, screens, plain, report)
    for screen in [*screens, escaped]:          # the live panel too
        assert not coloured(screen), [m.group(0) for m in SGR.finditer(screen)][:10]
