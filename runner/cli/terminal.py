"""How nnrun's text looks on a terminal: colour, and a report that fits the terminal's width.

Colour is on by default on a terminal and off with ``--no-color`` or a
non-empty ``NO_COLOR`` environment variable (https://no-color.org).  rich
honours ``NO_COLOR`` for colours but still writes bold and other attributes;
nnrun then asks rich for no escapes at all (``color_system=None``), so
``--no-color`` and ``NO_COLOR`` mean plain text.

A report on a terminal is laid out for the terminal's width
(:func:`layout_report`): the headline wraps at word boundaries, a field's
value wraps under itself (column 16), and the ``next:`` command wraps with a
trailing `` \\`` so that it can still be pasted into a shell.  A report that
does not go to a terminal (a file, a pipe, ``--json``'s stderr in CI) is
written exactly as :func:`runner.diagnosis.report.render_human` made it.
"""
from __future__ import annotations

import os
import re
import shlex
from typing import TextIO

from runner.errors import Outcome

VALUE_COLUMN = 16                   # "  nnU-Net log:  /path": values start here
COMMAND_LABELS = ("next:",)          # values that are shell commands: wrapped with " \"
_HEADLINE = re.compile(r"^nnrun(?: [a-z0-9]+)?: (?:oom \(out of memory\)|[a-z_]+):")
_OUTCOME_STYLES = {
    Outcome.OK: "bold green",
    Outcome.OOM: "bold red",
    Outcome.ERROR: "bold red",
    Outcome.KILLED: "bold red",
    Outcome.BUG: "bold red",
}


def color_wanted(no_color: bool = False) -> bool:
    """Colour unless ``--no-color`` was given or ``NO_COLOR`` is set to anything but the empty string."""
    return not no_color and os.environ.get("NO_COLOR", "") == ""


def make_console(stream: TextIO | None = None, color: bool = True, stderr: bool = False, **kwargs):
    """A rich Console for ``stream`` (or stdout/stderr) with colour on, or with no escapes at all."""
    from rich.console import Console

    if stream is not None:
        kwargs["file"] = stream
    elif stderr:
        kwargs["stderr"] = True
    if not color:
        kwargs["color_system"] = None       # no SGR escapes at all: NO_COLOR alone would keep bold
        kwargs["no_color"] = True
    return Console(highlight=False, **kwargs)


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def outcome_style(outcome: Outcome | None) -> str:
    return _OUTCOME_STYLES.get(outcome, "bold yellow") if outcome is not None else "bold"


def headline_outcome(line: str) -> Outcome | None:
    """The outcome a headline names (``nnrun: oom (out of memory): ...`` is oom), or None."""
    head = _HEADLINE.match(line)
    if not head:
        return None
    word = head.group(0).rstrip(":").split(": ", 1)[1]
    if word.startswith("oom"):
        return Outcome.OOM
    try:
        return Outcome(word)
    except ValueError:
        return None


def styled_headline(line: str):
    """A rich Text of one line whose ``nnrun: <outcome>:`` prefix carries the outcome's style."""
    from rich.text import Text

    head = _HEADLINE.match(line)
    if not head:
        return Text(line)
    text = Text()                   # (Text(..., style=) would be the style of the whole line)
    text.append(head.group(0), style=outcome_style(headline_outcome(line)))
    text.append(line[head.end():])
    return text


def _wrap_command(command: str, width: int) -> list[str]:
    """A shell command in lines of at most ``width`` columns, each but the last ending in `` \\``.

    Words are never broken, and an option starts a line together with its
    value (``--raw DIR``); when the two do not fit on one line, the value
    gets a line of its own.  A single word longer than a line overflows
    rather than changing the command.
    """
    try:
        words = shlex.split(command, posix=False)       # keeps quotes: a quoted argument stays one word
    except ValueError:
        words = command.split()
    units: list[list[str]] = []                        # an option and its value, or one word
    for word in words:
        if units and len(units[-1]) == 1 and units[-1][0].startswith("-") and not word.startswith("-"):
            units[-1].append(word)
        else:
            units.append([word])
    lines: list[str] = []
    current = ""
    for unit in units:
        text = " ".join(unit)
        candidate = f"{current} {text}" if current else text
        if len(candidate) + 2 <= width or not current and len(unit) == 1:     # room for " \"
            current = candidate
            continue
        if current:
            lines.append(current + " \\")
        if len(text) + 2 <= width or len(unit) == 1:
            current = text
        else:                                          # the option, then its value on a line of its own
            lines.append(unit[0] + " \\")
            current = unit[1]
    lines.append(current)
    return lines


def _wrap(text: str, width: int, indent: str) -> list[str]:
    """``text`` in lines of at most ``width`` columns, broken between words; later lines start with ``indent``.

    A word longer than a line (a path) is broken after a ``/`` where it can be, else where it must.
    """
    lines: list[str] = []
    current = ""
    for word in text.split():
        room = width - (len(indent) if lines else 0)
        candidate = f"{current} {word}" if current else word
        if len(candidate) <= room:
            current = candidate
            continue
        if current:
            lines.append(current)
            current = ""
            room = width - len(indent)
        while len(word) > room:
            cut = (word.rfind("/", 1, room) + 1) or room
            lines.append(word[:cut])
            word = word[cut:]
            room = width - len(indent)
        current = word
    lines.append(current)
    return lines[:1] + [indent + line for line in lines[1:]]


def fit_line(line: str, width: int, indent: str = "    ") -> str:
    """One line of progress for a terminal ``width`` columns wide: wrapped between words (a path after a
    ``/``), later lines indented, so that the terminal never has to break a word."""
    lead = line[:len(line) - len(line.lstrip())]
    return "\n".join(lead + part for part in _wrap(line, max(int(width), 24) - len(lead), indent))


def layout_report(text: str, width: int) -> list[tuple[str, str, str]]:
    """The report's lines for a terminal ``width`` columns wide, as (label, value, kind) triples.

    ``label`` is the part in the label column (``"  phase:        "``, or the
    headline's ``"nnrun: oom (out of memory):"``), ``value`` the rest of the
    line; ``kind`` is ``headline``, ``field``, ``command`` or ``more`` (a
    continuation line, label blank).  Joined, no line is wider than ``width``
    (for any width of at least 24 columns; only a word of the ``next:``
    command longer than the room left may overflow) and no word is split
    unless it is longer than a line (a long path: broken after a ``/``).
    """
    width = max(int(width), 24)
    out: list[tuple[str, str, str]] = []
    lines = text.split("\n")
    for n, line in enumerate(lines):
        head = _HEADLINE.match(line) if n == 0 else None
        if head:
            prefix = head.group(0)
            wrapped = _wrap(line, width, "    ")
            first = wrapped[0]
            out.append((first[:len(prefix)], first[len(prefix):], "headline"))
            out.extend(("", more, "more") for more in wrapped[1:])
            continue
        label = line[:VALUE_COLUMN]
        if (line.startswith("  ") and ":" in label and len(line) > VALUE_COLUMN
                and label.rstrip().endswith(":") and label.strip() != ""):
            value = line[VALUE_COLUMN:]
            room = width - VALUE_COLUMN
            is_command = label.strip() in COMMAND_LABELS
            parts = _wrap_command(value, room) if is_command else _wrap(value, room, "")
            kind = "command" if is_command else "field"
            out.append((label, parts[0], kind))
            out.extend((" " * VALUE_COLUMN, more, kind) for more in parts[1:])
            continue
        indent = line[:len(line) - len(line.lstrip())]
        for i, piece in enumerate(_wrap(line, width, indent + "  ")):
            out.append(("", piece, "more" if i else "text"))
    return out


def print_report(text: str, stream: TextIO, outcome: Outcome | None = None, color: bool = True) -> None:
    """Write a report: laid out and coloured on a terminal, exactly ``text`` anywhere else."""
    if not _is_tty(stream):
        stream.write(text + "\n")
        stream.flush()
        return
    from rich.text import Text

    console = make_console(stream, color=color)
    for label, value, kind in layout_report(text, console.width):
        line = Text()
        if kind == "headline":
            line.append(label, style=outcome_style(outcome))
            line.append(value)
        else:
            line.append(label, style="cyan" if label.strip() else "")
            line.append(value, style="bold" if kind == "command" else "")
        console.print(line, soft_wrap=True, crop=False)
    stream.flush()
