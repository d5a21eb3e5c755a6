"""`testbed`: run scenarios, analyse results, benchmark links, clean up after crashes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from testbed.errors import TestbedError

DEFAULT_RESULTS = Path("results")


def _progress(quiet: bool) -> object:
    """Progress on one rewritten line on a terminal, one line per phase otherwise."""
    tty = sys.stderr.isatty()
    last = {"phase": ""}

    def show(message: str) -> None:
        if quiet:
            return
        if message.startswith("running:"):
            if tty:
                print(f"\r  {message}", end="", file=sys.stderr, flush=True)
            return
        if tty and last["phase"].startswith("workload"):
            print(file=sys.stderr)
        last["phase"] = message
        print(f"  {message}", file=sys.stderr, flush=True)

    return show


def cmd_list(args: argparse.Namespace) -> int:
    import dataclasses

    from experiments import SCENARIOS

    for name, cls in sorted(SCENARIOS.items()):
        print(f"{name}: {cls.description}")
        if args.verbose:
            for f in dataclasses.fields(cls.params_type):
                default = f.default if f.default is not dataclasses.MISSING else "?"
                print(f"    {f.name} = {default}")
    return 0


def run_one(scenario_name: str, overrides: Sequence[str], client_stack: str, server_stack: str,
            link_backend: str, seed: int, out: Path | None, results_root: Path,
            analyze: bool, quiet: bool = False) -> Path:
    from experiments import get_scenario
    from experiments.runner import Run, RunOptions
    from experiments.scenario import parse_overrides

    cls = get_scenario(scenario_name)
    scenario = cls(parse_overrides(cls.params_type, overrides))
    # A scenario of many concurrent flows (experiments/flows.py) brings its own run.
    run_type = getattr(scenario, "runner", Run)
    run = run_type(scenario, RunOptions(client_stack=client_stack, server_stack=server_stack,
                                        link_backend=link_backend, seed=seed, out_dir=out,
                                        results_root=results_root,
                                        progress=_progress(quiet)))  # type: ignore[arg-type]
    if not quiet:
        print(f"{run.run_id}", file=sys.stderr)
    run_dir = run.execute()
    if analyze and not run.summary.get("interrupted"):
        from analysis.report import analyze_run

        analyze_run(run_dir)
    s = run.summary
    print(f"{run_dir}: goodput {s.get('goodput_mbps')} Mbit/s, {s.get('subflows')} subflow(s), "
          f"sha256 {'match' if s.get('sha256_match') else 'MISMATCH'}, "
          f"{s.get('duration_s')} s" + ("" if s.get("fidelity_ok") else "  [fidelity warning]"))
    for error in s.get("errors", []):
        print(f"  error: {error}", file=sys.stderr)
    return run_dir


def _stacks(args: argparse.Namespace) -> tuple[str, str]:
    client = args.client_stack or args.stack
    server = args.server_stack or args.stack
    return client, server


def cmd_run(args: argparse.Namespace) -> int:
    client, server = _stacks(args)
    run_dir = run_one(args.scenario, args.set, client, server, args.link_backend, args.seed,
                      args.out, args.results, analyze=not args.no_analyze, quiet=args.quiet)
    summary = json.loads((run_dir / "summary.json").read_text())
    return 0 if summary.get("sha256_match") and not summary.get("interrupted") else 1


def cmd_analyze(args: argparse.Namespace) -> int:
    from analysis.report import analyze_run

    for run_dir in args.run_dirs:
        metrics = analyze_run(Path(run_dir))
        print(f"{run_dir}: {json.dumps(metrics, default=str)}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from testbed.emu.cleanup import clean_stale
    from testbed.emu.network import require_root

    require_root("testbed clean")
    done = clean_stale(force=args.force)
    for line in done:
        print(line)
    if not done:
        print("nothing to clean")
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    from experiments.suites import run_suite

    return run_suite(args.name, args.results, args.link_backend, args.seed, full=args.full,
                     overrides=args.set)


def cmd_figures(args: argparse.Namespace) -> int:
    from experiments.suites import redraw

    return redraw(args.results)


def cmd_bench(args: argparse.Namespace) -> int:
    from experiments.bench import bench_links

    return bench_links(args.link_backend, args.seed, rate_mbps=args.rate, delay_ms=args.delay,
                       loss_pct=args.loss, seconds=args.seconds, out=args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="testbed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list scenarios")
    p.add_argument("-v", "--verbose", action="store_true", help="show parameters and defaults")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="run a scenario once")
    p.add_argument("scenario")
    p.add_argument("--stack", default="kernel", help="stack at both ends (kernel, tcp, ...)")
    p.add_argument("--client-stack", help="stack of the client (overrides --stack)")
    p.add_argument("--server-stack", help="stack of the server (overrides --stack)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="scenario parameter (repeatable); `testbed list -v` shows them")
    p.add_argument("--link-backend", default="auto", choices=["auto", "netem", "userspace"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, help="results directory of this run")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help="root under which runs are stored when --out is not given")
    p.add_argument("--no-analyze", action="store_true", help="skip figures after the run")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("analyze", help="figures and metrics of existing run directories")
    p.add_argument("run_dirs", nargs="+")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("suite", help="run a set of scenarios and draw comparison figures")
    p.add_argument("name", nargs="?", default="default",
                   help="a built-in suite, or a suite file (FILE.toml, see suites/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="parameter for every run of the suite (repeatable)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--link-backend", default="auto", choices=["auto", "netem", "userspace"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--full", action="store_true", help="the longer, fuller version")
    p.set_defaults(func=cmd_suite)

    p = sub.add_parser("figures", help="redraw comparison figures and the report from results")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("bench", help="benchmarks that print numbers")
    p.add_argument("what", choices=["links"])
    p.add_argument("--link-backend", default="auto", choices=["auto", "netem", "userspace"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=20.0, help="configured rate, Mbit/s")
    p.add_argument("--delay", type=float, default=10.0, help="configured one-way delay, ms")
    p.add_argument("--loss", type=float, default=1.0, help="configured loss, percent")
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    p.add_argument("--out", type=Path, help="also write the results as JSON to this file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("clean", help="remove what crashed or killed runs left behind")
    p.add_argument("--force", action="store_true",
                   help="also stop runs whose runner is still alive")
    p.set_defaults(func=cmd_clean)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except TestbedError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("testbed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
