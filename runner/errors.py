"""One error hierarchy for nnrun, mapped to outcomes and exit codes in one place.

Every failure nnrun expects is raised as a subclass of :class:`NnrunError`.  The
CLI catches them, renders the one-line message and exits with
:func:`exit_code_for`.  Anything else is a bug in nnrun (exit 1).

Standard library only: the in-container supervisor imports this module.
"""
from __future__ import annotations

import signal
from enum import Enum


class Outcome(str, Enum):
    """The verdict of a run.  The value is what ``--json`` prints."""

    OK = "ok"
    BAD_INPUT = "bad_input"
    OOM = "oom"
    ERROR = "error"
    KILLED = "killed"
    INFRA = "infra"
    INTERRUPTED = "interrupted"
    BUG = "bug"


# The documented exit codes (README, "Outcomes and exit codes").  INTERRUPTED
# depends on the signal: see exit_code_for.
EXIT_CODES: dict[Outcome, int] = {
    Outcome.OK: 0,
    Outcome.BUG: 1,
    Outcome.BAD_INPUT: 2,
    Outcome.OOM: 3,
    Outcome.ERROR: 4,
    Outcome.KILLED: 5,
    Outcome.INFRA: 6,
    Outcome.INTERRUPTED: 130,
}


def exit_code_for(outcome: Outcome, interrupt_signal: int | None = None) -> int:
    """The process exit code for an outcome.

    Interrupted runs follow the shell convention 128 + signal number, so
    SIGINT gives 130 and SIGTERM 143.
    """
    if outcome is Outcome.INTERRUPTED:
        return 128 + int(interrupt_signal or signal.SIGINT)
    return EXIT_CODES[outcome]


class NnrunError(Exception):
    """Base of every error nnrun expects.  ``str(err)`` is the one-line message."""

    outcome: Outcome = Outcome.BUG

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return " ".join(text.split())


class BadInputError(NnrunError):
    """The user's input is wrong: nothing was started."""

    outcome = Outcome.BAD_INPUT


class NotEnoughMemoryError(BadInputError):
    """The cap cannot hold what the run needs even with one worker per pool: refused before any container.

    ``mem_arg`` is the ``--mem`` that would fit (:func:`runner.estimate.need.memory_needed`);
    ``recommendation_argv`` the whole command to run instead, when the caller knows it.
    """

    def __init__(self, message: str, *, hint: str, mem_arg: str | None,
                 recommendation_argv: list[str] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.mem_arg = mem_arg
        self.recommendation_argv = recommendation_argv


class DamagedFileError(BadInputError):
    """An image or label file is truncated, garbled or not what its header says."""

    def __init__(self, path, reason: str) -> None:
        super().__init__(f"damaged input file {path}: {reason}",
                         hint="replace or re-export the file")
        self.path = str(path)
        self.reason = reason


class InfraError(NnrunError):
    """Docker daemon unreachable, image missing, container could not start."""

    outcome = Outcome.INFRA


class CgroupReadError(NnrunError):
    """A cgroup file is missing or does not parse.  Readers raise only this."""

    outcome = Outcome.INFRA


class RunInterrupted(NnrunError):
    """nnrun itself received SIGINT or SIGTERM."""

    outcome = Outcome.INTERRUPTED

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}: container stopped and removed")
        self.signum = signum
