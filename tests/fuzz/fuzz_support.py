"""Shared pieces of the fuzz harness: byte mutations, the property every loader must keep, and the two profiles.

The property: a loader given any input either loads it (and the caller then checks the data is sane) or raises a
``MoezooError`` whose message is one line and names the file (or folder); any other exception fails the test.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st

from moezoo.errors import MoezooError

SLOW_EXAMPLES = 10_000
OUTCOMES: dict[str, Counter] = defaultdict(Counter)  # loader -> {"loaded": n, "error": n}, printed at the end
MESSAGES: dict[str, Counter] = defaultdict(Counter)  # loader -> the start of each error (paths cut), for -v

# each fuzz test runs twice: its default share (in CI) and, marked slow, 10,000 examples
PROFILES = [pytest.param("fuzz", id="default"), pytest.param("fuzz-slow", id="slow", marks=pytest.mark.slow)]


def fuzz_settings(profile: str, examples: int) -> settings:
    """The profile's settings; the default profile with this test's ``examples``."""
    base = settings.get_profile(profile)
    return settings(base, max_examples=examples) if profile == "fuzz" else base


@contextlib.contextmanager
def scratch(parent: Path):
    """A fresh folder for one example's files (inside the test's tmp_path)."""
    with tempfile.TemporaryDirectory(dir=parent) as folder:
        yield Path(folder)


def outcome(loader: str, load, names: list[str]):
    """``load()``'s result, or None after checking its MoezooError is one line naming one of ``names``.

    Any other exception propagates and fails the property.
    """
    try:
        result = load()
    except MoezooError as error:
        message = str(error)
        assert message and "\n" not in message and "\r" not in message, f"not one line: {message!r}"
        assert any(name in message for name in names), f"names none of {names}: {message!r}"
        OUTCOMES[loader]["error"] += 1
        for name in names:
            message = message.replace(name, "<path>")
        MESSAGES[loader][message[:70]] += 1
        return None
    OUTCOMES[loader]["loaded"] += 1
    return result


def expect_both_outcomes(loader: str, before: Counter) -> None:
    """The run of one fuzz test both loaded some inputs and rejected some (else it tested little)."""
    now = OUTCOMES[loader]
    assert now["loaded"] > before["loaded"], f"{loader}: no generated input loaded"
    assert now["error"] > before["error"], f"{loader}: no generated input was rejected"


@st.composite
def mutated(draw, data: bytes, allow_none: bool = True) -> bytes:
    """``data`` damaged: bit flips, truncation, deleted / inserted / overwritten bytes, garbage, or emptied."""
    kinds = ["bit", "bits", "truncate", "delete", "insert", "overwrite", "garbage", "empty"]
    kind = draw(st.sampled_from((["none"] * len(kinds) if allow_none else []) + kinds))  # half intact
    data = bytearray(data)
    if kind == "none" or (not data and kind not in ("insert", "garbage")):
        return bytes(data)
    if kind in ("bit", "bits"):
        for _ in range(1 if kind == "bit" else draw(st.integers(2, 16))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "delete":
        start = draw(st.integers(0, len(data) - 1))
        del data[start:start + draw(st.integers(1, 64))]
    elif kind == "insert":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "overwrite":
        at = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=64))
        data[at:at + len(chunk)] = chunk
    elif kind == "garbage":
        data = bytearray(draw(st.binary(max_size=512)))
    else:
        data = bytearray()
    return bytes(data)


ENCODINGS = ["utf-8", "latin-1", "utf-16", "utf-16-le", "utf-32", "utf-8-sig"]


def encode(text: str, encoding: str) -> bytes:
    """Text in one of ``ENCODINGS`` (latin-1 replaces what it cannot hold)."""
    return text.encode(encoding, errors="replace")
