"""Memory sizes: parse what the user gives to ``--mem``, print sizes for humans.

Standard library only: the in-container supervisor imports this module.

The syntax is the one of ``docker run --memory``: ``<number>[unit]`` with the
unit one of b, k, m, g, t, p (case-insensitive, binary multiples: k = 1024),
optionally followed by ``b`` or ``ib`` after k..p (``16g``, ``16gb``,
``16GiB``).  A number without a unit is bytes.  Fractions are allowed and the
result is truncated to whole bytes exactly like the Docker SDK's
``docker.utils.parse_bytes`` (``int(float(number) * unit)``), so nnrun and the
SDK never disagree about the size of the same string.
"""
from __future__ import annotations

import re

from runner.errors import BadInputError

KIB = 1024
MIB = 1024 ** 2
GIB = 1024 ** 3
TIB = 1024 ** 4
PIB = 1024 ** 5

# The daemon refuses smaller memory limits ("Minimum memory limit allowed is
# 6MB", linuxMinMemory = 6291456 in moby).  Checking here turns a late daemon
# error into an early, explained BadInputError.
DOCKER_MIN_MEMORY_BYTES = 6 * MIB

_UNIT_BYTES: dict[str, int] = {"b": 1, "k": KIB, "m": MIB, "g": GIB, "t": TIB, "p": PIB}

# [0-9] and not \d: \d also matches non-ASCII digits, which float() would
# happily accept.  The "b"/"ib" tail is only allowed after a multiple, so
# "16bb" and "16ib" are rejected.
_MEM_RE = re.compile(
    r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<unit>[kmgtp])(?:i?b)?|(?P<bytes>b))?",
    re.IGNORECASE,
)

_EXAMPLES = "give a size like 16g, 4096m or 2.5g"


def parse_mem(text: str, option: str = "--mem") -> int:
    """The number of bytes in a ``--mem`` value such as ``16g`` or ``1.5GiB``.

    Raises BadInputError, with a one-line message that says what to give
    instead, for empty, unparsable, negative, zero and too-small values.
    Host memory is not checked here: that needs the daemon, the caller does it.
    ``option`` is the option the messages name (``--shm-size`` parses the same way).
    """
    stripped = text.strip()
    if not stripped:
        raise BadInputError(f"{option} is empty: {_EXAMPLES}")
    if stripped.startswith("-") and _MEM_RE.fullmatch(stripped[1:].strip()):
        raise BadInputError(f"invalid {option} '{stripped}': a memory size cannot be negative; {_EXAMPLES}")
    match = _MEM_RE.fullmatch(stripped)
    if match is None:
        raise BadInputError(f"invalid {option} '{stripped}': {_EXAMPLES}")
    unit = (match.group("unit") or "b").lower()
    try:
        n_bytes = int(float(match.group("number")) * _UNIT_BYTES[unit])
    except OverflowError:  # hundreds of digits: float() gives inf
        raise BadInputError(f"invalid {option} '{stripped}': far too large; {_EXAMPLES}") from None
    if n_bytes <= 0:
        raise BadInputError(f"invalid {option} '{stripped}': the size must be more than zero; {_EXAMPLES}")
    if n_bytes < DOCKER_MIN_MEMORY_BYTES:
        raise BadInputError(
            f"invalid {option} '{stripped}': below Docker's minimum of 6 MiB; give at least 6m, e.g. 4096m"
        )
    return n_bytes


_HUMAN_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(n: int) -> str:
    """A size for humans in binary units with at most one decimal: ``1.5 GiB``,
    ``512 MiB``, ``300 B``.  Negative sizes (differences) keep their sign."""
    sign = "-" if n < 0 else ""
    n = abs(int(n))
    if n < KIB:
        return f"{sign}{n} B"
    exponent = 0
    while exponent < len(_HUMAN_UNITS) - 1 and n >= 1024 ** (exponent + 1):
        exponent += 1
    value = round(n / 1024 ** exponent, 1)
    if value >= 1024 and exponent < len(_HUMAN_UNITS) - 1:
        # 1023.96 MiB rounds to 1024.0: say 1 GiB instead.
        exponent += 1
        value = round(n / 1024 ** exponent, 1)
    number = f"{value:.1f}".removesuffix(".0")
    return f"{sign}{number} {_HUMAN_UNITS[exponent]}"


# Below this a whole-gigabyte suggestion would be too coarse (1g vs 1.3g is a
# big difference); above it a whole gigabyte is the natural granularity.
_WHOLE_GIB_FROM = 4 * GIB
_MIB_STEP = 64 * MIB


def format_mem_arg_at_most(n: int) -> str:
    """A ``--mem`` value of at most ``n`` bytes (the counterpart of :func:`format_mem_arg`, rounded DOWN).

    Whole gigabytes from 4 GiB on (23.5 GiB gives ``23g``), else a multiple of
    64 MiB written in megabytes, else whole megabytes; never below Docker's
    6 MiB minimum: ``parse_mem(format_mem_arg_at_most(n)) <= n`` for every
    ``n`` of at least 6 MiB.
    """
    if n >= _WHOLE_GIB_FROM:
        return f"{n // GIB}g"
    if n >= _MIB_STEP:
        return f"{n // _MIB_STEP * 64}m"
    return f"{max(n // MIB, DOCKER_MIN_MEMORY_BYTES // MIB)}m"


def format_mem_arg(n: int) -> str:
    """A ``--mem`` value of at least ``n`` bytes, rounded UP to read well.

    Whole gigabytes (``5g``) from 4 GiB on, else a multiple of 64 MiB written
    in megabytes (``1536m``).  Rounding up keeps suggestions safe:
    ``parse_mem(format_mem_arg(n)) >= n`` always holds, and the result is at
    least 64m, above Docker's 6 MiB minimum.
    """
    if n <= 0:
        raise ValueError(f"a memory size must be positive, got {n}")
    if n >= _WHOLE_GIB_FROM:
        return f"{-(-n // GIB)}g"
    steps = -(-n // _MIB_STEP)
    return f"{steps * 64}m"
