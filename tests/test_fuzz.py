"""Hostile images: a bounded fuzzing run, and every past finding replayed as a regression test."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from . import fuzzing

REGRESSIONS = json.loads((Path(__file__).parent / "data" / "fuzz_regressions.json").read_text())


@pytest.mark.parametrize("case", REGRESSIONS, ids=[c["id"] for c in REGRESSIONS])
def test_past_finding_now_ends_in_a_typed_error(case):
    assert fuzzing.reproduces(case, op_seconds=5.0) is None


def test_bounded_fuzzing_run_finds_nothing():
    """About 1,500 mutated images through every library path: only data or typed errors, no hang, bounded memory."""
    with tempfile.TemporaryDirectory() as out:
        findings = fuzzing.run(inputs=1500, jobs=2, seed=20261123, out=out, progress=False)
        details = [p.read_text() for p in Path(out).glob("*.json")]
    assert findings == 0, "\n\n".join(details)
