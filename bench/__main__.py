"""Run every benchmark in bench/ (each `bench/<name>.py`, not starting with `_`) as a subprocess, in order.

Usage: `python -m bench [name ...]`. A benchmark that fails is reported loudly and makes the run fail,
but the others still run so one run shows every figure. Long ones (`soak`, ~10 minutes) run only when named.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
# Benchmarks named here run first, in this order; any others follow alphabetically.
ORDER = ("serving", "overload", "ingest", "rollout")
ONLY_WHEN_NAMED = frozenset({"soak"})


def discover(*, named_only: bool = False) -> list[str]:
    """Names of the benchmark modules in bench/ (with `named_only`, also those left out of the default run)."""
    found = {p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_")}
    if not named_only:
        found -= ONLY_WHEN_NAMED
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def main(argv: list[str]) -> int:
    """Run the named benchmarks (default: all); non-zero if any failed."""
    names = argv or discover()
    unknown = sorted(set(names) - set(discover(named_only=True)))
    if unknown:
        print(f"bench: unknown benchmark(s) {unknown}; have {discover(named_only=True)}", file=sys.stderr)
        return 2
    failed: list[str] = []
    for name in names:
        print(f"== bench {name}", flush=True)
        start = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"], cwd=BENCH_DIR.parent)
        took = time.monotonic() - start
        if code != 0:
            print(f"!! bench {name} FAILED with exit code {code} after {took:.0f} s", file=sys.stderr, flush=True)
            failed.append(name)
        else:
            print(f"== bench {name} done in {took:.0f} s", flush=True)
    if failed:
        print(f"!! failed benchmarks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
