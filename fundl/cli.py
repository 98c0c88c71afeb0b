"""The ``fundl`` command line: run a bundled example (or an example file) as an experiment.

    fundl run NAME [--seed N] [--set key=value ...] [--out DIR] [--quiet]
              [--devices N] [--cpu-devices N] [--distributed [--coordinator HOST:PORT --num-processes N --process-id I]]
              [--stop-after-steps N]
    fundl resume RUN_DIR [--quiet]
    fundl sample RUN_DIR [--prompt TEXT] [--temperature T] [--length N] [--seed N]
    fundl list
    fundl ls [DIR]
    fundl show RUN_DIR
    fundl compare RUN_DIR RUN_DIR [RUN_DIR ...]
    fundl plot RUN_DIR [RUN_DIR ...] [--metric SPLIT/METRIC] [-o FILE.png]
    fundl --version

``run`` and ``resume`` use JAX's persistent compilation cache (see
:func:`compilation_cache_directory`; ``--no-compilation-cache`` turns it off).

Exit status of ``run`` and ``resume``: 0 finished (the budget, or a hook such as early
stopping, ended it); 2 a usage, config or file error (a full disk included: the message
names the file and the way on); 3 stopped by a NaN or infinite loss (the last good
checkpoint is kept); 75 interrupted by SIGTERM, SIGHUP, Ctrl-C or --stop-after-steps
(continue with ``fundl resume``; interrupted while starting, the message says what is
left); 130 aborted by a second Ctrl-C (the message says which checkpoint is kept).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_USAGE, EXIT_NONFINITE, EXIT_INTERRUPTED, EXIT_ABORTED = 2, 3, 75, 130


def _parser() -> argparse.ArgumentParser:
    import fundl

    parser = argparse.ArgumentParser(prog="fundl", description="Functional deep learning in JAX: run experiments.")
    parser.add_argument("--version", action="version", version=f"fundl {fundl.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    devices = _device_options()

    run = commands.add_parser("run", parents=[devices], help="train an example and record the run in a run directory")
    run.add_argument("example", help="a bundled example (see `fundl list`) or the path of an example .py file")
    run.add_argument("--seed", type=int, help="the seed (shorthand for --set seed=N)")
    run.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by its dotted key, e.g. --set train.epochs=3 (repeatable)",
    )
    run.add_argument("--out", help="the run directory (default: runs/<name>-<timestamp>)")
    run.add_argument("--quiet", action="store_true", help="no progress bar or per-evaluation lines")
    run.add_argument(
        "--devices",
        type=int,
        metavar="N",
        help="train data-parallel on N devices (default: all; 1 turns it off); shorthand for --set train.devices=N",
    )
    run.add_argument(
        "--seeds",
        metavar="SEEDS",
        help="train one member per seed as one compiled program (a sweep), e.g. 0-31 or 0,1,5",
    )
    run.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="sweep an optimizer setting as members, crossed with --seeds, e.g. optimizer.learning_rate=0.01,0.1",
    )
    run.add_argument(
        "--stop-after-steps",
        type=int,
        metavar="N",
        help="stop at step N as if preempted: save a checkpoint and exit (status 75); continue with fundl resume",
    )

    resume = commands.add_parser(
        "resume", parents=[devices], help="continue an interrupted run from its latest checkpoint, exactly"
    )
    resume.add_argument("run_dir", help="the run directory")
    resume.add_argument("--quiet", action="store_true", help="no progress bar or per-evaluation lines")

    sample = commands.add_parser("sample", help="generate from a finished run of a generative example (charlm)")
    sample.add_argument("run_dir", help="the run directory")
    sample.add_argument("--prompt", default="", help="the text to continue")
    sample.add_argument(
        "--temperature", type=float, default=1.0, help="below 1: safer choices; above 1: more surprising"
    )
    sample.add_argument("--length", type=int, default=200, help="how many characters to generate")
    sample.add_argument("--seed", type=int, default=0, help="the sampling seed")

    commands.add_parser("list", help="list the bundled examples")

    ls = commands.add_parser(
        "ls", help="list the run directories under DIR: example, status, steps, a metric, fingerprint"
    )
    ls.add_argument("directory", nargs="?", default="runs", metavar="DIR", help="where the runs are (default: runs)")
    show = commands.add_parser("show", help="a run's config, environment and final metrics")
    show.add_argument("run_dir", help="the run directory")
    compare = commands.add_parser("compare", help="runs side by side: final metrics, differing config, fingerprints")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more run directories")
    plot = commands.add_parser("plot", help="one metric of several runs against the step, into a PNG")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one or more run directories")
    plot.add_argument(
        "--metric",
        metavar="SPLIT/METRIC",
        help="what to draw, e.g. test/loss (default: test/accuracy if logged, else train/loss)",
    )
    plot.add_argument(
        "-o", "--output", default="plot.png", metavar="FILE.png", help="the PNG to write (default: plot.png)"
    )
    return parser


def _device_options() -> argparse.ArgumentParser:
    """The options that must act before JAX starts, shared by ``run`` and ``resume``."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--cpu-devices",
        type=int,
        metavar="N",
        help="run on the CPU as N devices (fake devices for laptops and CI); must come before JAX starts",
    )
    options.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run (on a TPU pod slice: nothing else to give; elsewhere also "
        "--coordinator, --num-processes and --process-id)",
    )
    options.add_argument("--coordinator", metavar="HOST:PORT", help="with --distributed: process 0's address")
    options.add_argument("--num-processes", type=int, metavar="N", help="with --distributed: how many processes")
    options.add_argument(
        "--process-id", type=int, metavar="I", help="with --distributed: this process's index, 0 to N-1"
    )
    options.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="do not use JAX's persistent compilation cache (default: $FUNDL_COMPILATION_CACHE, "
        "else ~/.cache/fundl/jax; a repeated run then skips compiling)",
    )
    return options


_RUN_TOOLS = ("ls", "show", "compare", "plot")


def _run_tool(args: argparse.Namespace) -> str:
    """``fundl ls/show/compare/plot``: they read run files only, so they skip loading the examples."""
    from fundl.runs import _tools

    if args.command == "ls":
        found = _tools.list_runs(args.directory)
        return _tools.format_runs(found) if found else f"no run directories in {args.directory}"
    if args.command == "show":
        return _tools.show_run(args.run_dir)
    if args.command == "compare":
        return _tools.compare_runs(args.run_dirs)
    path, metric = _tools.plot_runs(args.run_dirs, args.metric, args.output)
    return f"wrote {path}: {metric} of {len(args.run_dirs)} run(s)"


def main(argv: Sequence[str] | None = None) -> int:  # noqa: C901  (one branch per command and exit status, in one place)
    """Entry point of the ``fundl`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command in ("run", "resume"):
            _start_jax(args)
    except (ValueError, RuntimeError) as error:
        print(f"fundl: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.command in _RUN_TOOLS:
        try:
            text = _run_tool(args)
        except (ValueError, OSError) as error:
            print(f"fundl: error: {error}", file=sys.stderr)
            return 2
        print(text)
        return 0
    from fundl import runs  # imported here so that `fundl --help` answers at once

    try:
        if args.command == "list":
            for name in runs.bundled_examples():
                module = runs.load_example(name)
                print(f"{name:<16} {(module.__doc__ or '').strip().splitlines()[0]}")
            return 0
        if args.command == "sample":
            text = runs.sample(
                args.run_dir, args.prompt, temperature=args.temperature, length=args.length, seed=args.seed
            )
            print(args.prompt + text)
            return 0
        if args.command == "resume":
            result = runs.resume(args.run_dir, quiet=args.quiet)
        else:
            settings = runs.parse_settings(args.settings)
            if args.seed is not None:
                settings.append(("seed", args.seed))
            if args.devices is not None:
                settings.append(("train.devices", args.devices))
            if args.seeds or args.sweep:
                if args.seed is not None:
                    raise ValueError("a sweep takes --seeds (not --seed)")
                seeds = (
                    runs.parse_seeds(args.seeds)
                    if args.seeds
                    else [runs.resolve_config(runs.load_example(args.example), settings)["seed"]]
                )
                result = runs.sweep(
                    args.example,
                    settings,
                    seeds=seeds,
                    sweep=runs.parse_sweep(args.sweep),
                    out=args.out,
                    quiet=args.quiet,
                    stop_after_steps=args.stop_after_steps,
                )
            else:
                result = runs.run(
                    args.example, settings, out=args.out, quiet=args.quiet, stop_after_steps=args.stop_after_steps
                )
    except (ValueError, OSError) as error:
        print(f"fundl: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as error:  # a signal while starting, or a second Ctrl-C: the message says what is left
        from fundl.runs._lifecycle import StartInterrupted

        print(f"fundl: {getattr(error, 'message', '') or 'aborted by Ctrl-C'}", file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(error, StartInterrupted) else EXIT_ABORTED
    history = result.history
    assert history is not None  # a run or a resume has just trained
    if history.nonfinite:
        return EXIT_NONFINITE
    if history.interrupted:
        return EXIT_INTERRUPTED
    if history.stop_reason:
        print(f"stopped early: {history.stop_reason}", file=sys.stderr)
    return 0


def _start_jax(args: argparse.Namespace) -> None:
    """What must happen before JAX starts: fake CPU devices, joining a multi-process run."""
    from fundl import distributed

    if args.cpu_devices is not None:
        distributed.use_cpu_devices(args.cpu_devices)
    multi = (args.coordinator, args.num_processes, args.process_id)
    if not args.distributed and any(value is not None for value in multi):
        raise ValueError("--coordinator, --num-processes and --process-id go with --distributed")
    if args.distributed:
        distributed.initialize(*multi)
    if not args.no_compilation_cache:
        distributed.use_persistent_cache(compilation_cache_directory())


def compilation_cache_directory() -> Path:
    """Where ``fundl run`` keeps compiled programs: ``$FUNDL_COMPILATION_CACHE``, else ``$XDG_CACHE_HOME/fundl/jax``."""
    if os.environ.get("FUNDL_COMPILATION_CACHE"):
        return Path(os.environ["FUNDL_COMPILATION_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fundl" / "jax"


if __name__ == "__main__":
    sys.exit(main())
