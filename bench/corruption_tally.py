"""Tally of the corruption generator (tests/corruption.py): every case, each in its own process.

    .venv/bin/python bench/corruption_tally.py [--rule NAME ...] [-j 2] [--timeout 20] [--keep DIR] [--json FILE]

Prints the counts per outcome per rule with a total line, then every case that did not pass (rule/case id,
outcome, flags, exception type and the first line of its message). Exit status 1 if any case did not pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import corruption  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", action="append", choices=list(corruption.RULES), help="only these rules (repeatable)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds before a case counts as a hang")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR (must not exist) and keep every case folder")
    parser.add_argument("--json", metavar="FILE", help="also write every result to FILE")
    args = parser.parse_args()
    if args.keep:
        os.makedirs(args.keep)
    start = time.monotonic()
    results = corruption.run(args.rule, jobs=args.jobs, timeout=args.timeout, root=args.keep, keep=bool(args.keep),
                             progress=lambda r: print("." if corruption.passed(r) else "x", end="", flush=True))
    print(f"\n{len(results)} cases in {time.monotonic() - start:.1f} s (-j {args.jobs})\n")
    print(corruption.tally(results))
    failing = [r for r in results if not corruption.passed(r)]
    if failing:
        print(f"\n{len(failing)} not passing:")
        for r in failing:
            print("  " + corruption.describe(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
