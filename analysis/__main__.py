"""Command line: `python -m analysis run|compare|report RUN_DIR...`.

Thin wrapper over `analysis.report`; the testbed CLI may call those functions directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis.report import analyze_run, compare_runs, write_report

__all__ = ["analyze_run", "compare_runs", "main", "write_report"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="figures and metrics of one results directory")
    run.add_argument("run_dir", type=Path)
    compare = sub.add_parser("compare", help="comparison figure across runs")
    compare.add_argument("run_dirs", type=Path, nargs="+")
    compare.add_argument("--out", type=Path, required=True, help="output directory")
    report = sub.add_parser("report", help="Markdown report of runs")
    report.add_argument("run_dirs", type=Path, nargs="+")
    report.add_argument("--out", type=Path, required=True, help="report path (.md)")
    args = parser.parse_args(argv)

    if args.command == "run":
        result = analyze_run(args.run_dir)
        print(json.dumps({k: result[k] for k in ("run", "stack", "figures")}, indent=2))
    elif args.command == "compare":
        for path in compare_runs(args.run_dirs, args.out):
            print(path)
    else:
        print(write_report(args.run_dirs, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
