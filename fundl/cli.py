"""The ``fundl`` command line: run a bundled example (or an example file) as an experiment.

    fundl run NAME [--seed N] [--set key=value ...] [--out DIR] [--verbose LEVEL | --quiet]
              [--devices N] [--cpu-devices N] [--distributed [--coordinator HOST:PORT --num-processes N --process-id I]]
              [--stop-after-steps N]
    fundl resume RUN_DIR [--verbose LEVEL | --quiet]
    fundl sample RUN_DIR [--prompt TEXT] [--temperature T] [--length N] [--seed N]
    fundl list
    fundl config [EXAMPLE] [--set key=value ...]
    fundl ls [DIR]
    fundl show RUN_DIR
    fundl compare RUN_DIR RUN_DIR [RUN_DIR ...]
    fundl plot RUN_DIR [RUN_DIR ...] [--metric SPLIT/METRIC] [-o FILE.png] [--x epoch|step]
    fundl --version

``run`` and ``resume`` use JAX's persistent compilation cache (see
:func:`compilation_cache_directory`; ``--no-compilation-cache`` turns it off).

Exit status of ``run`` and ``resume``: 0 finished (the budget, or a hook such as early
stopping, ended it); 2 a usage, config or file error (a full disk included: the message
names the file and the way on); 3 stopped by a NaN or infinite loss (the last good
checkpoint is kept); 75 interrupted by SIGTERM, SIGHUP, Ctrl-C or --stop-after-steps
(continue with ``fundl resume``; interrupted while starting, the message says what is
left); 130 aborted by a second Ctrl-C (the message says which checkpoint is kept). Any
command whose reader goes away (``fundl show RUN | head``) stops quietly with 141, as a
program killed by SIGPIPE does.

Results go to stdout, diagnostics (progress, errors) to stderr. Nothing imports JAX
before a command needs it, so ``fundl --help``, ``ls``, ``show``, ``compare``, ``list`` and
``config`` answer at once (``benchmarks/cli_startup.py`` measures it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_USAGE, EXIT_NONFINITE, EXIT_INTERRUPTED, EXIT_ABORTED, EXIT_BROKEN_PIPE = 2, 3, 75, 130, 141


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
    _output_options(run)
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
    _output_options(resume)

    sample = commands.add_parser("sample", help="generate from a finished run of a generative example (charlm)")
    sample.add_argument("run_dir", help="the run directory")
    sample.add_argument("--prompt", default="", help="the text to continue")
    sample.add_argument(
        "--temperature", type=float, default=1.0, help="below 1: safer choices; above 1: more surprising"
    )
    sample.add_argument("--length", type=int, default=200, help="how many characters to generate")
    sample.add_argument("--seed", type=int, default=0, help="the sampling seed")

    commands.add_parser("list", help="list the bundled examples")
    config = commands.add_parser(
        "config", help="an example's every config key with its type, value and meaning (without one: the defaults)"
    )
    config.add_argument("example", nargs="?", help="a bundled example or the path of an example .py file")
    config.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="show the config with this value set, as fundl run --set would (repeatable)",
    )

    data = commands.add_parser("data", help="datasets on disk: pack data into ArrayRecord files that runs read lazily")
    pack = data.add_subparsers(dest="data_command", required=True).add_parser(
        "pack",
        help="write an example's splits (or an IDX pair) as ArrayRecord shards with their metadata",
        description="fundl data pack EXAMPLE DIR writes every split of the example to DIR/<split>/ (then: fundl run "
        "EXAMPLE --set data.records=DIR); fundl data pack IMAGES.idx DIR --labels LABELS.idx writes one IDX pair.",
    )
    pack.add_argument("source", help="a bundled example or example file; with --labels, an IDX images file")
    pack.add_argument("out", help="the directory to write")
    pack.add_argument("--labels", metavar="LABELS.idx", help="the IDX labels file that goes with the IDX images")
    pack.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the example's config overrides, as for fundl run",
    )
    pack.add_argument("--shards", type=int, default=1, help="files per split (default: 1)")

    ls = commands.add_parser(
        "ls", help="list the run directories under DIR: example, status, steps, a metric, fingerprint"
    )
    ls.add_argument("directory", nargs="?", default="runs", metavar="DIR", help="where the runs are (default: runs)")
    show = commands.add_parser("show", help="a run's config, environment and final metrics")
    show.add_argument("run_dir", help="the run directory")
    compare = commands.add_parser("compare", help="runs side by side: final metrics, differing config, fingerprints")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more run directories")
    plot = commands.add_parser("plot", help="one metric of several runs against the epoch (or step), into a PNG")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one or more run directories")
    plot.add_argument(
        "--metric",
        metavar="SPLIT/METRIC",
        help="what to draw, e.g. test/loss (default: test/accuracy if logged, else train/loss)",
    )
    plot.add_argument(
        "-o", "--output", default="plot.png", metavar="FILE.png", help="the PNG to write (default: plot.png)"
    )
    plot.add_argument("--x", choices=("epoch", "step"), default="epoch", help="the x axis (default: epoch)")
    return parser


def _output_options(parser: argparse.ArgumentParser) -> None:
    """``--verbose LEVEL`` and ``--quiet``, shared by ``run`` and ``resume``."""
    parser.add_argument(
        "-v",
        "--verbose",
        default="bar",
        metavar="LEVEL",
        help="what training prints: 0 or silent; 1 or epochs (a line per evaluation); "
        "2 or bar (and a live progress bar: plain progress lines when stderr is not a terminal); default: bar",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing while training (--verbose 0)")


def _verbose(args: argparse.Namespace) -> int:
    from fundl.train._progress import verbosity

    return verbosity(0 if args.quiet else int(args.verbose) if args.verbose.isdigit() else args.verbose)


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


_RUN_TOOLS = ("ls", "show", "compare", "plot", "list", "config")


def _run_tool(args: argparse.Namespace) -> str:
    """The commands that read files only (runs, examples' sources): they start no JAX."""
    from fundl.runs import _describe, _tools

    if args.command == "list":
        return "\n".join(
            f"{name:<16} {_describe.summary_line(_describe.example_file(name))}"
            for name in _describe.bundled_examples()
        )
    if args.command == "config":
        from fundl.runs._config import parse_settings

        return _describe.show_config(args.example, parse_settings(args.settings))
    if args.command == "ls":
        found = _tools.list_runs(args.directory)
        return _tools.format_runs(found) if found else f"no run directories in {args.directory}"
    if args.command == "show":
        return _tools.show_run(args.run_dir)
    if args.command == "compare":
        return _tools.compare_runs(args.run_dirs)
    path, metric = _tools.plot_runs(args.run_dirs, args.metric, args.output, x=args.x)
    return f"wrote {path}: {metric} of {len(args.run_dirs)} run(s)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fundl`` console script; returns the exit status."""
    try:
        return _main(argv)
    except BrokenPipeError:  # the reader went away (`fundl show RUN | head`): stop quietly, as `head`'s writers do
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _silence_stdout() -> None:
    """Points stdout at /dev/null, so that Python's flush at exit does not fail again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's captured stdout)
        pass


def _main(argv: Sequence[str] | None) -> int:  # noqa: C901  (one branch per command and exit status, in one place)
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
        if args.command == "data":
            print(_pack(args))
            return 0
        if args.command == "sample":
            text = runs.sample(
                args.run_dir, args.prompt, temperature=args.temperature, length=args.length, seed=args.seed
            )
            print(args.prompt + text)
            return 0
        if args.command == "resume":
            result = runs.resume(args.run_dir, verbose=_verbose(args))
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
                    verbose=_verbose(args),
                    stop_after_steps=args.stop_after_steps,
                )
            else:
                result = runs.run(
                    args.example, settings, out=args.out, verbose=_verbose(args), stop_after_steps=args.stop_after_steps
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


def _pack(args: argparse.Namespace) -> str:
    """``fundl data pack``: an example's splits, or an IDX pair, as ArrayRecord files."""
    from fundl import datasets, runs

    if args.labels is not None:
        images, labels = datasets.read_idx(args.source), datasets.read_idx(args.labels)
        meta = datasets.write_records(args.out, {"image": images, "label": labels}, shards=args.shards)
        return f"wrote {meta['count']} examples to {args.out}"
    written = runs.pack(args.source, runs.parse_settings(args.settings), args.out, shards=args.shards)
    splits = ", ".join(f"{name} {meta['count']}" for name, meta in written.items())
    command = f"fundl run {args.source} --set data.records={args.out}"
    return f"wrote {splits} examples under {args.out}; train from them with: {command}"


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
