"""A/B of CPU at a paced rate: `bench_cpu.py` from several source trees, alternating.

On a shared machine one run says little; rounds that alternate the trees put each pair
under about the same load. Each tree is a checkout of ssmd (for example
`git archive REV | tar -x -C /tmp/ssmd-REV`); its own `benchmarks/bench_cpu.py` runs
with this interpreter and imports that tree's `ssmd`. A tree may be prefixed with the
recorder to run: `bare:TREE` (the bare nats-py recorder), `floor:TREE` (reading and
stamping frames alone) or `null:TREE` (ssmd's threads waking on its read grid and doing
nothing: this machine's price of waking); the default is ssmd.

    .venv/bin/python benchmarks/ab_cpu.py --rate 100 --rounds 3 /tmp/ssmd-before . bare:. null:.
    .venv/bin/python benchmarks/ab_cpu.py --rate 1000 ssmd@0:. ssmd@0.1:. floor:.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

_LINE = re.compile(r"^(ssmd|bare|floor|null): +([\d.]+)% of a core")


def run_once(
    recorder: str, tree: Path, rate: float, seconds: float, read_interval: str
) -> tuple[float, str]:
    """(% of a core, bench_cpu's line) for one run."""
    extra = ["--read-interval", read_interval] if read_interval else []
    out = subprocess.run(
        [
            sys.executable,
            str(tree / "benchmarks" / "bench_cpu.py"),
            "--only",
            recorder,
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
            "--idle",
            "3",
            *extra,
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",  # so that the tree's own ssmd is imported, not the working directory's
    ).stdout
    for line in out.splitlines():
        match = _LINE.match(line)
        if match and match.group(1) == recorder:
            return float(match.group(2)), line
    raise RuntimeError(f"no result from {tree}: {out[-500:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "trees",
        nargs="+",
        help=(
            "TREE, bare:TREE, floor:TREE, null:TREE, or ssmd@SECONDS:TREE (that "
            "connector.read_interval; null@SECONDS:TREE wakes on that grid)"
        ),
    )
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    specs: list[tuple[str, str, Path]] = []
    for spec in args.trees:
        recorder, _, tree = spec.rpartition(":")
        recorder, _, read_interval = recorder.partition("@")
        specs.append((recorder or "ssmd", read_interval, Path(tree).resolve()))
    figures: dict[str, list[float]] = {spec: [] for spec in args.trees}
    for round_ in range(1, args.rounds + 1):
        for spec, (recorder, read_interval, tree) in zip(args.trees, specs, strict=True):
            core, line = run_once(recorder, tree, args.rate, args.seconds, read_interval)
            figures[spec].append(core)
            load = os.getloadavg()[0]
            print(f"round {round_} {spec} (load {load:.1f}): {line}", flush=True)
    print(f"\n% of one core at {args.rate:,.0f} msg/s, {args.rounds} alternating rounds:")
    for spec, values in figures.items():
        listed = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {spec}: mean {statistics.mean(values):.1f} ({listed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
