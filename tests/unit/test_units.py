"""Pure tests of runner.units: --mem parsing and size formatting."""
from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from runner.errors import BadInputError
from runner.units import (
    DOCKER_MIN_MEMORY_BYTES,
    GIB,
    KIB,
    MIB,
    PIB,
    TIB,
    format_bytes,
    format_mem_arg,
    format_mem_arg_at_most,
    parse_mem,
)

try:  # only the SDK-equivalence test needs the Docker SDK (not the daemon)
    import docker.errors as docker_errors
    import docker.utils as docker_utils
except ImportError:  # pragma: no cover - the SDK is installed on the host
    docker_errors = docker_utils = None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16g", 16 * GIB),
        ("16G", 16 * GIB),
        ("16gb", 16 * GIB),
        ("16GB", 16 * GIB),
        ("16GiB", 16 * GIB),
        ("16gib", 16 * GIB),
        ("1.5g", 1610612736),
        ("2.5g", 2684354560),
        ("512m", 536870912),
        ("4096m", 4 * GIB),
        ("4096MiB", 4 * GIB),
        ("6144k", 6 * MIB),
        ("6144KB", 6 * MIB),
        ("1073741824", GIB),
        ("1073741824b", GIB),
        ("1073741824B", GIB),
        ("6291456", DOCKER_MIN_MEMORY_BYTES),  # exactly Docker's minimum
        ("6m", DOCKER_MIN_MEMORY_BYTES),
        ("1t", TIB),
        ("1TiB", TIB),
        ("1p", PIB),
        ("  16g  ", 16 * GIB),
        ("\t16g\n", 16 * GIB),
        ("0.1g", 107374182),  # truncated like the Docker SDK: int(0.1 * 2**30)
        (".5g", GIB // 2),
        ("3.g", 3 * GIB),
        ("007m", 7 * MIB),
    ],
)
def test_parse_mem_accepts(text: str, expected: int) -> None:
    assert parse_mem(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "", "   ", "abc", "12x", "g", "gb", "16 g", "16bb", "16ib", "16gi", "1.5.5g", "1,5g",
        "1e9", "inf", "nan", "0x10", "16g16", "+16g", "１６g", "16\u00a0g", "16g;", ".g", ".",
    ],
)
def test_parse_mem_rejects_garbage(text: str) -> None:
    with pytest.raises(BadInputError) as caught:
        parse_mem(text)
    message = caught.value.one_line()
    assert "16g" in message  # says what to give instead
    assert "\n" not in str(caught.value)


def test_parse_mem_empty_message() -> None:
    with pytest.raises(BadInputError, match="--mem is empty"):
        parse_mem("")


def test_parse_mem_message_names_the_input() -> None:
    with pytest.raises(BadInputError) as caught:
        parse_mem("abc")
    assert str(caught.value) == "invalid --mem 'abc': give a size like 16g, 4096m or 2.5g"


@pytest.mark.parametrize("text", ["-1g", "-1", " -512m", "-0.5g"])
def test_parse_mem_rejects_negative(text: str) -> None:
    with pytest.raises(BadInputError, match="negative"):
        parse_mem(text)


@pytest.mark.parametrize("text", ["0", "0g", "0.0g", "000m", "0.0000001k", "0b"])
def test_parse_mem_rejects_zero(text: str) -> None:
    with pytest.raises(BadInputError, match="more than zero"):
        parse_mem(text)


@pytest.mark.parametrize("text", ["5m", "1", "1k", "6291455", "5.99m", "6143k"])
def test_parse_mem_rejects_below_docker_minimum(text: str) -> None:
    with pytest.raises(BadInputError, match="6 MiB"):
        parse_mem(text)


def test_parse_mem_rejects_absurdly_long_numbers() -> None:
    with pytest.raises(BadInputError, match="too large"):
        parse_mem("9" * 400 + "g")


@given(st.text())
def test_parse_mem_raises_only_bad_input(text: str) -> None:
    try:
        result = parse_mem(text)
    except BadInputError:
        return
    assert isinstance(result, int) and result >= DOCKER_MIN_MEMORY_BYTES


# -- equivalence with the Docker SDK -----------------------------------------

_numbers = st.one_of(
    st.integers(min_value=0, max_value=10**13).map(str),
    st.builds(
        lambda whole, frac: f"{whole}.{frac}",
        st.integers(min_value=0, max_value=10**6),
        st.from_regex(r"[0-9]{1,6}", fullmatch=True),
    ),
)
_suffixes = st.sampled_from(
    ["", "b", "B", "k", "K", "m", "M", "g", "G", "kb", "KB", "mb", "MB", "gb", "GB", "Gb"]
)


def _sdk_parse(text: str) -> int | None:
    try:
        return docker_utils.parse_bytes(text)
    except docker_errors.DockerException:
        return None


@pytest.mark.skipif(docker_utils is None, reason="docker SDK not installed")
@given(_numbers, _suffixes)
def test_parse_mem_agrees_with_docker_sdk(number: str, suffix: str) -> None:
    text = number + suffix
    sdk = _sdk_parse(text)
    try:
        ours = parse_mem(text)
    except BadInputError:
        ours = None
    if ours is not None:
        assert ours == sdk
    if sdk is not None and sdk >= DOCKER_MIN_MEMORY_BYTES:
        assert ours == sdk


# -- formatting ----------------------------------------------------------------

@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (300, "300 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (512 * MIB, "512 MiB"),
        (GIB + GIB // 2, "1.5 GiB"),
        (GIB, "1 GiB"),
        (GIB - 1, "1 GiB"),  # 1023.99... MiB would read worse
        (1407 * MIB, "1.4 GiB"),
        (3 * TIB, "3 TiB"),
        (5 * PIB, "5 PiB"),
        (2048 * PIB, "2048 PiB"),
        (-512 * MIB, "-512 MiB"),
    ],
)
def test_format_bytes(n: int, expected: str) -> None:
    assert format_bytes(n) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, "64m"),
        (64 * MIB, "64m"),
        (64 * MIB + 1, "128m"),
        (1407 * MIB, "1408m"),
        (1500 * MIB, "1536m"),
        (4 * GIB - 1, "4096m"),
        (4 * GIB, "4g"),
        (4 * GIB + 1, "5g"),
        (16 * GIB, "16g"),
    ],
)
def test_format_mem_arg(n: int, expected: str) -> None:
    assert format_mem_arg(n) == expected


@pytest.mark.parametrize("n", [0, -1])
def test_format_mem_arg_rejects_non_positive(n: int) -> None:
    with pytest.raises(ValueError):
        format_mem_arg(n)


@given(st.integers(min_value=1, max_value=2**50))
def test_format_mem_arg_round_trips_upwards(n: int) -> None:
    arg = format_mem_arg(n)
    parsed = parse_mem(arg)
    assert parsed >= n
    step = GIB if n >= 4 * GIB else 64 * MIB
    assert parsed - n < step


@pytest.mark.parametrize("n,expected", [(int(23.5 * GIB), "23g"), (4 * GIB, "4g"), (4 * GIB - 1, "4032m"),
                                         (1200 * MIB, "1152m"), (64 * MIB, "64m"), (10 * MIB, "10m"),
                                         (6 * MIB, "6m")])
def test_format_mem_arg_at_most(n: int, expected: str) -> None:
    assert format_mem_arg_at_most(n) == expected


@given(st.integers(min_value=DOCKER_MIN_MEMORY_BYTES, max_value=2**50))
def test_format_mem_arg_at_most_round_trips_downwards(n: int) -> None:
    parsed = parse_mem(format_mem_arg_at_most(n))          # a value --mem accepts ...
    assert parsed <= n                                     # ... that is not more than n
    step = GIB if n >= 4 * GIB else 64 * MIB if n >= 64 * MIB else MIB
    assert n - parsed < step


@given(st.integers(min_value=0, max_value=2**62))
def test_format_bytes_is_short_and_in_a_binary_unit(n: int) -> None:
    text = format_bytes(n)
    number, unit = text.split(" ")
    assert unit in {"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
    value = float(number)
    scale = {"B": 1, "KiB": KIB, "MiB": MIB, "GiB": GIB, "TiB": TIB, "PiB": PIB}[unit]
    assert abs(value * scale - n) <= 0.05 * scale + 0.5
    assume(unit != "PiB")
    assert value < 1024
