"""The typing is a tested feature: mypy (strict, as `make lint` runs it) accepts the
examples and typed uses, and refuses each marked misuse in tests/typing_cases/misuse.py
with the expected error, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from mypy import api

REPO = Path(__file__).resolve().parent.parent
CASES = REPO / "tests" / "typing_cases"


def _mypy(*paths: Path) -> list[str]:
    out, err, _ = api.run(
        ["--strict", "--no-incremental", "--show-error-codes", "--no-error-summary"]
        + [str(p) for p in paths]
    )
    assert not err, err
    return [line for line in out.splitlines() if ": error: " in line]


def test_examples_and_typed_calls_type_check() -> None:
    examples = sorted((REPO / "examples").glob("*.py")) + sorted(
        (REPO / "examples" / "tour").glob("*.py")
    )
    assert _mypy(*examples, CASES / "typed_calls.py") == []


def test_each_misuse_is_a_type_error() -> None:
    misuse = CASES / "misuse.py"
    expected = {
        n: m.group(1).strip()
        for n, line in enumerate(misuse.read_text().splitlines(), start=1)
        if (m := re.search(r"  # E: (.*)$", line))
    }
    assert len(expected) >= 10
    errors: dict[int, list[str]] = {}
    for line in _mypy(misuse):
        _, number, text = line.split(":", 2)
        errors.setdefault(int(number), []).append(text)
    assert sorted(errors) == sorted(expected), errors
    for number, fragment in expected.items():
        assert any(fragment in text for text in errors[number]), (number, errors[number])
