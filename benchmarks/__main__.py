"""Every benchmark in one run: ``python -m benchmarks [--quick]``.

The tap's benchmark, then the target's, on this machine, one after the other (so they do not
compete for its cores). Each prints what it measured and against what; see their modules.
"""

from __future__ import annotations

import sys
import time

from benchmarks import tap_bench, target_bench


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks; ``--quick`` is passed on for a smoke run."""
    args = list(sys.argv[1:] if argv is None else argv)
    unknown = [a for a in args if a != "--quick"]
    if unknown:
        print(f"usage: python -m benchmarks [--quick]  (unknown: {' '.join(unknown)})")
        return 2
    started = time.monotonic()
    status = 0
    for bench in (tap_bench, target_bench):
        print(f"\n===== {bench.__name__} =====\n", flush=True)
        status |= bench.main(args)
    print(f"\nall benchmarks: {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
