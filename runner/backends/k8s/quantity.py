"""Kubernetes quantities: memory sizes as the Kubernetes API writes them (``3Gi``, ``1536Mi``, ``3G``)."""
from __future__ import annotations

import re
from decimal import Decimal

from runner.units import GIB, KIB, MIB, TIB

_BINARY_SUFFIXES = {"Ki": KIB, "Mi": MIB, "Gi": GIB, "Ti": TIB, "Pi": 1024 ** 5, "Ei": 1024 ** 6}
_DECIMAL_SUFFIXES = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
                     "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12,
                     "P": Decimal(10) ** 15, "E": Decimal(10) ** 18}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+|[numkMGTPE]?)$")


def quantity_bytes(text: str) -> int:
    """A memory quantity of the Kubernetes API (``3Gi``, ``1536Mi``, ``3G``, ``3e9``, ``268435456``) in bytes.

    Fractions of a byte round up, as Kubernetes does when it turns a quantity into bytes.
    Raises ValueError for anything else.
    """
    m = _QUANTITY.match(str(text).strip())
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number, suffix = Decimal(m.group(1)), m.group(2)
    if suffix in _BINARY_SUFFIXES:
        value = number * _BINARY_SUFFIXES[suffix]
    elif suffix[:1] in ("e", "E"):
        value = number * Decimal(10) ** int(suffix[1:])
    else:
        value = number * _DECIMAL_SUFFIXES[suffix]
    return int(value.to_integral_value(rounding="ROUND_CEILING"))


def bytes_quantity(n_bytes: int) -> str:
    """Bytes as a quantity: the largest binary suffix that divides them exactly (``3Gi``, ``1536Mi``), else
    the plain number; ``quantity_bytes(bytes_quantity(n)) == n`` always."""
    for suffix in ("Ti", "Gi", "Mi", "Ki"):
        unit = _BINARY_SUFFIXES[suffix]
        if n_bytes % unit == 0:
            return f"{n_bytes // unit}{suffix}"
    return str(n_bytes)
