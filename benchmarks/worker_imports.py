"""What `celery worker` imports before it loads the app: the share of the CLI's rendering library (rich) in it.

    .venv/bin/python benchmarks/worker_imports.py [--runs 7]

`celery` loads every celery.commands entry point (this package's CLI among
them) at start-up, in every worker. The baseline, measured in the same run, is
the whole `import celery.bin.celery`; the figure is the part spent in rich and
the modules only rich pulls in (markdown_it, mdurl), from ``python -X importtime``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

RICH = ("rich", "markdown_it", "mdurl")


def one_run() -> tuple[int, int, int]:
    """(total self time, rich's self time) in microseconds, and how many rich modules were imported."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import celery.bin.celery"],
        capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    total = rich = count = 0
    for line in err.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = line.removeprefix("import time:").split("|")
        total += int(self_us)
        if name.strip().split(".")[0] in RICH:
            rich += int(self_us)
            count += 1
    return total, rich, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    runs = [one_run() for _ in range(max(1, min(args.runs, 50)))]
    total = statistics.median(r[0] for r in runs) / 1000
    rich = statistics.median(r[1] for r in runs) / 1000
    print(f"import celery.bin.celery: {total:.1f} ms (median of {len(runs)})", flush=True)
    print(f"rich and its own dependencies: {runs[0][2]} modules, {rich:.1f} ms, {rich / total:.1%} of it", flush=True)


if __name__ == "__main__":
    main()
