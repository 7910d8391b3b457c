"""Every case of the corruption generator (tests/corruption.py) must end in a typed error naming the file at fault,
or in a load that gives the reference logits exactly; no case may touch a file outside the checkpoint folder, and
no load may change the folder. `bench/corruption_tally.py` runs the same cases and prints the tally."""

from __future__ import annotations

from collections import Counter

import pytest

import corruption


def test_generator_makes_distinct_cases_from_every_rule():
    cases = corruption.all_cases()
    per_rule = Counter(c.rule for c in cases)
    assert set(per_rule) == set(corruption.RULES) and min(per_rule.values()) >= 5, per_rule
    assert len(cases) >= 300 and len({c.id for c in cases}) == len(cases)


def test_every_corruption_is_refused_by_name_or_loads_correctly(tmp_path):
    results = corruption.run(jobs=2, timeout=20.0, root=str(tmp_path))
    failing = [r for r in results if not corruption.passed(r)]
    if failing:  # one failure listing every case, so that one run shows everything
        pytest.fail(f"{len(failing)} of {len(results)} corruption cases did not pass:\n"
                    + "\n".join(corruption.describe(r) for r in failing) + "\n\n" + corruption.tally(results),
                    pytrace=False)
