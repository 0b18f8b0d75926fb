"""Run every bench/bench_*.py in turn with this Python; exit non-zero if any fails.

    .venv/bin/python bench/run_all.py [--quick]

``--quick`` is passed on to each benchmark (one run of each, for smoke testing).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one run of each, for smoke testing")
    args = ap.parse_args()

    benches = sorted(HERE.glob("bench_*.py"))
    if not benches:
        print(f"no bench_*.py in {HERE}", file=sys.stderr)
        return 1
    failed: list[str] = []
    for path in benches:
        cmd = [sys.executable, str(path)] + (["--quick"] if args.quick else [])
        print(f"=== {path.name}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run(cmd).returncode
        took = time.perf_counter() - start
        print(f"=== {path.name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {took:.0f} s\n",
              flush=True)
        if rc != 0:
            failed.append(path.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all {len(benches)} benchmarks ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
