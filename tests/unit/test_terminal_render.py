"""What a user sees on an 80-column terminal, without Docker: the live panel and the report, in colour and without.

* ``layout_report``: the report fitted to 80 columns (words kept whole, the
  ``next:`` command wrapped with `` \\`` so that it still pastes into a shell).
* ``RichProgress`` on a rich Console of 80 columns that is a terminal: every
  line fits, colour escapes by default, none with ``color=False``.
* ``print_report`` and ``nnrun report`` on a real pseudo-terminal of 80
  columns: colour by default, none with ``--no-color`` or ``NO_COLOR=1``,
  and exactly the rendered text when stdout is not a terminal.

The same checks on a real run inside tmux: tests/integration/test_terminal_real.py.
"""
from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from runner.cli.progress import RichProgress
from runner.cli.terminal import color_wanted, layout_report, make_console, print_report
from runner.diagnosis.report import RunReport, render_human, report_from_json, to_json
from runner.errors import Outcome
from tests.unit.test_cli_progress import SEQUENCE, _sample

REPO = Path(__file__).resolve().parents[2]
SGR = re.compile(r"\x1b\[[0-9;]*m")                  # colour and other attributes
ANY_ESCAPE = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07)")
COMMAND = "nnrun preprocess -d 501 --mem 1200m -c 3d_fullres -np 2 -npfp 1 --raw /data/nnUNet_raw/with/a/long/path"


def oom_report() -> RunReport:
    """The README's OOM report, with a long log path and a long next command."""
    return RunReport(
        outcome=Outcome.OOM,
        message=("the kernel OOM-killed a worker process (pid 69) during preprocessing 3d_fullres (cases in flight: "
                 "case000, case001, case002, case003); anonymous memory peaked at 1.2 GiB of the 1.2 GiB cap"),
        phase="preprocessing", configuration="3d_fullres",
        victims=[{"role": "worker", "pid": 69, "case": "case003"}], oom_kills=1, oom_source="cgroup",
        cases_in_flight=["case000", "case001", "case002", "case003"], limit_bytes=1200 * 2**20,
        peak_anon_bytes=1199 * 2**20, peak_usage_bytes=1199 * 2**20,
        workers={"npfp": 1, "np": {"3d_fullres": 4}},
        log_path="/data/nnUNet_preprocessed/Dataset501_Demo/.nnrun/runs/20261125-193118-82c826/nnunet.log",
        recommendation_text="use fewer workers for 3d_fullres: -np 2 (was 4)", recommendation=COMMAND,
        duration_s=21.4)


def lines_of(text: str) -> list[str]:
    """The pieces of text a terminal puts on one row each: colour escapes removed, cursor moves end a piece."""
    return [piece for piece in re.split(r"\n|\r|" + ANY_ESCAPE.pattern, SGR.sub("", text)) if piece]


# -- layout_report ---------------------------------------------------------------------------------

@pytest.mark.parametrize("width", [80, 60, 100])
def test_the_report_fits_the_terminal_and_keeps_every_word(width):
    text = render_human(oom_report())
    laid = layout_report(text, width)
    lines = [label + value for label, value, _ in laid]
    assert all(len(line) <= width for line in lines), [line for line in lines if len(line) > width]
    assert lines[0].startswith("nnrun: oom (out of memory): the kernel OOM-killed")
    assert laid[0][0] == "nnrun: oom (out of memory):" and laid[0][2] == "headline"
    # Words are whole (only the log path, longer than a line at 60 columns, may be cut).
    words = [w for w in text.split() if w != "\\"]
    joined = " ".join(w for w in " ".join(lines).split() if w != "\\")
    for word in words:
        if len(word) <= width - 16:
            assert word in joined.split(), word
    # Field values stay in their column.
    for label, value, kind in laid[1:]:
        assert kind in ("field", "command", "more", "text")
        if kind in ("field", "command"):
            assert len(label) == 16 and not value.startswith(" "), (label, value)


def test_the_next_command_wraps_so_that_it_still_pastes_into_a_shell():
    laid = layout_report(render_human(oom_report()), 80)
    command = [value for _, value, kind in laid if kind == "command"]
    assert len(command) >= 2
    assert all(line.endswith(" \\") for line in command[:-1]) and not command[-1].endswith("\\")
    assert " ".join(line.removesuffix(" \\") for line in command) == COMMAND


def test_an_option_whose_value_is_long_is_split_from_it_rather_than_overflow():
    long = "nnrun preprocess -d 501 --mem 1200m --preprocessed /tmp/pytest-of-root/pytest-7/test_colour_on_an_80_col0/pre"
    report = oom_report()
    report.recommendation = long
    laid = layout_report(render_human(report), 80)
    command = [value for _, value, kind in laid if kind == "command"]
    assert all(16 + len(line) <= 80 for line in command), command
    assert " ".join(line.removesuffix(" \\") for line in command) == long


def test_an_ok_report_and_a_one_line_error_fit_too():
    ok = RunReport(outcome=Outcome.OK, message="preprocessed 6 cases of Dataset501_Demo (2d, 3d_fullres)",
                   limit_bytes=6 << 30, peak_anon_bytes=900 << 20, duration_s=30.2,
                   log_path="/x/nnunet.log")
    for report in (ok, RunReport(outcome=Outcome.BAD_INPUT, message="no dataset 999 in /data/raw " * 5)):
        lines = [label + value for label, value, _ in layout_report(render_human(report), 80)]
        assert all(len(line) <= 80 for line in lines)
        assert lines[0].startswith(f"nnrun: {report.outcome.value}:")


# -- the live panel on a rich terminal of 80 columns -----------------------------------------------

def _panel_run(color: bool) -> str:
    buffer = io.StringIO()
    # (without colour make_console replaces color_system by None: no escapes at all)
    console = make_console(buffer, color=color, force_terminal=True, width=80, color_system="truecolor")
    p = RichProgress(color=color, console=console)
    try:
        p.stage("checking 12 image and label files of Dataset501_Demo to the end")
        for event, _ in SEQUENCE:
            p.event(event)
            p.memory(_sample(1900))
            p.live.refresh()
        console.print(p._render())          # the panel as it stands at the end, kept in the buffer
    finally:
        p.close()
    return buffer.getvalue()


def test_the_live_panel_fits_80_columns_in_colour():
    written = _panel_run(color=True)
    assert SGR.search(written), "no colour escapes on a terminal"
    lines = lines_of(written)
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    assert "preprocessing 3d_fullres" in text and "OOM kills" in text
    assert "case002 (pid 69)" in text and "of 2 GiB cap" in text


def test_the_live_panel_without_colour_has_no_attribute_escapes():
    written = _panel_run(color=False)
    assert not SGR.search(written), repr(SGR.search(written))
    lines = lines_of(written)
    assert max(len(line) for line in lines) <= 80
    assert "preprocessing 3d_fullres" in "\n".join(lines)


def test_only_the_outcome_of_a_headline_is_coloured():
    from runner.cli.terminal import styled_headline

    buffer = io.StringIO()
    console = make_console(buffer, color=True, force_terminal=True, width=80, color_system="standard")
    console.print(styled_headline("nnrun: oom (out of memory): the kernel OOM-killed a worker (pid 76)"))
    written = buffer.getvalue()
    assert written.startswith("\x1b[1;31mnnrun: oom (out of memory):\x1b[0m the kernel"), repr(written)
    assert written.rstrip().endswith("(pid 76)")


def test_no_color_follows_the_flag_and_the_environment(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert color_wanted() and not color_wanted(no_color=True)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not color_wanted()
    monkeypatch.setenv("NO_COLOR", "")          # https://no-color.org: only a non-empty value counts
    assert color_wanted()


def test_rich_itself_keeps_bold_under_no_color_so_nnrun_asks_for_no_escapes(monkeypatch):
    """Why make_console sets color_system=None: rich's own NO_COLOR handling still writes bold."""
    from rich.console import Console

    monkeypatch.setenv("NO_COLOR", "1")
    buffer = io.StringIO()
    Console(file=buffer, force_terminal=True, width=80).print("[bold red]x[/]")
    assert SGR.search(buffer.getvalue())
    buffer = io.StringIO()
    make_console(buffer, color=False, force_terminal=True, width=80).print("[bold red]x[/]")
    assert buffer.getvalue() == "x\n"


# -- a real pseudo-terminal of 80 columns --------------------------------------------------------------

def _pty(columns: int = 80, rows: int = 40) -> tuple[int, int]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    return master, slave


def _drain(master: int, timeout: float = 5.0) -> str:
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:         # the other side closed (EIO on Linux)
            break
        if not data:
            break
        chunks.append(data)
        timeout = 0.3
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize("color", [True, False])
def test_print_report_on_a_real_pty(color, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    master, slave = _pty()
    try:
        with open(slave, "w", closefd=False) as stream:
            print_report(render_human(oom_report()), stream, Outcome.OOM, color=color)
        written = _drain(master)
    finally:
        os.close(slave)
        os.close(master)
    assert bool(SGR.search(written)) is color
    lines = [line for line in lines_of(written) if line]
    assert max(len(line) for line in lines) <= 80, lines
    assert lines[0].startswith("nnrun: oom (out of memory):")
    assert any(line.startswith("  next:         nnrun preprocess") for line in lines)


def test_print_report_off_a_terminal_is_the_rendered_text():
    buffer = io.StringIO()
    text = render_human(oom_report())
    print_report(text, buffer, Outcome.OOM, color=True)
    assert buffer.getvalue() == text + "\n"


def _nnrun_report_on_a_pty(run_dir: Path, *args: str, env_extra: dict | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "FORCE_COLOR")}
    env.update({"TERM": "xterm-256color", "PYTHONPATH": str(REPO)}, **(env_extra or {}))
    master, slave = _pty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "report", str(run_dir), *args],
                                stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, cwd=REPO)
        os.close(slave)
        written = _drain(master, timeout=30)
        assert proc.wait(timeout=30) == 0       # (it prints an earlier report)
    finally:
        os.close(master)
    return written


@pytest.fixture
def run_dir(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(to_json(oom_report())))
    return folder


@pytest.mark.parametrize(("args", "env", "colour"), [
    ((), {}, True),
    (("--no-color",), {}, False),
    ((), {"NO_COLOR": "1"}, False),
])
def test_nnrun_report_on_a_real_pty(run_dir, args, env, colour):
    written = _nnrun_report_on_a_pty(run_dir, *args, env_extra=env)
    assert bool(SGR.search(written)) is colour, written
    lines = [line for line in lines_of(written) if line]
    assert max(len(line) for line in lines) <= 80, lines
    assert lines[0].startswith("nnrun: oom (out of memory): the kernel OOM-killed a worker process")
    assert any("case000, case001," in line for line in lines)


def test_nnrun_report_into_a_pipe_is_plain(run_dir):
    out = subprocess.run([sys.executable, "-m", "runner.cli", "report", str(run_dir)], capture_output=True,
                         text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert out.returncode == 0
    assert out.stdout.startswith(render_human(report_from_json(to_json(oom_report()))))
    assert "\x1b" not in out.stdout
