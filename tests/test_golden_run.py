"""The fixed-seed golden run (tests/golden_run.py) gives the recorded numbers to 1e-4 relative (see golden_run.py)."""

from __future__ import annotations

import json

from golden_run import RECORD, compare, golden_numbers


def test_golden_run_reproduces_the_record(tmp_path):
    want = json.loads(RECORD.read_text())
    bad = compare(golden_numbers(tmp_path), want)
    assert not bad, f"{len(bad)} of {len(want)} numbers differ from {RECORD.name}:\n" + "\n".join(bad[:40])


def test_compare_flags_a_changed_value_and_a_missing_name():
    want = {"a": 1.0, "b": 2.0}
    assert compare({"a": 1.0 + 1e-9, "b": 2.0}, want) == []
    assert compare({"a": 1.001, "c": 0.0}, want) == ["a: 1.001 != 1.0", "missing: b", "new: c"]
    assert compare({"a": 1.0 + 5e-6, "b": 2.0 * (1 - 2e-4)}, want) == [f"b: {2.0 * (1 - 2e-4)} != 2.0"]
