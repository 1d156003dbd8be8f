"""The ``fedlora`` command: run, compare, flower-sim, flower-run, plot, inspect, config.

Bad input of any kind ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from fedlora.errors import FedloraError

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except FedloraError as error:
        print(f"fedlora: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fedlora: interrupted; the last checkpoint is kept (use --resume)", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedlora",
        description="Federated LoRA fine-tuning with heterogeneous client ranks.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run one federated fine-tuning experiment")
    run.add_argument("config", nargs="?", type=Path, help="TOML config (default: built-in)")
    _add_overrides(run)
    run.add_argument("--out", type=Path, help="run directory (overrides run.out_dir)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an unfinished run")
    _add_rounds(run)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(handler=_cmd_run)

    compare = commands.add_parser(
        "compare", help="run several aggregators on the same partitions, ranks and seeds"
    )
    compare.add_argument("config", nargs="?", type=Path, help="TOML config (default: built-in)")
    compare.add_argument(
        "--aggregators", required=True, help="comma-separated names, e.g. flexlora,replication"
    )
    compare.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    _add_overrides(compare)
    compare.add_argument(
        "--set-for",
        dest="method_overrides",
        action="append",
        nargs=2,
        default=[],
        metavar=("METHOD", "KEY=VALUE"),
        help="override a key for one method only, e.g. --set-for fedit ranks.policy=fixed "
        "(repeatable)",
    )
    compare.add_argument("--out", type=Path, help="comparison directory (default: run.out_dir)")
    compare.add_argument("--overwrite", action="store_true", help="replace existing runs")
    compare.add_argument("--no-progress", action="store_true", help="no progress bar")
    compare.set_defaults(handler=_cmd_compare)

    flower = commands.add_parser(
        "flower-sim", help="run the experiment through Flower's Ray simulation on this machine"
    )
    flower.add_argument("config", nargs="?", type=Path, help="TOML config (default: built-in)")
    _add_overrides(flower)
    flower.add_argument("--out", type=Path, help="run directory (overrides run.out_dir)")
    flower.add_argument("--overwrite", action="store_true", help="replace an existing run")
    flower.add_argument(
        "--cpus-per-client", type=int, default=1, help="Ray CPUs per ClientApp (default 1)"
    )
    flower.add_argument(
        "--gpus-per-client",
        type=float,
        default=0.0,
        help="share of a GPU per ClientApp, e.g. 0.5 (default 0: no GPU reserved)",
    )
    _add_round_timeout(flower)
    flower.set_defaults(handler=_cmd_flower_sim)

    deploy = commands.add_parser(
        "flower-run",
        help="submit the experiment to a running Flower SuperLink (deployment) and follow it",
    )
    deploy.add_argument("config", nargs="?", type=Path, help="TOML config (default: built-in)")
    _add_overrides(deploy)
    deploy.add_argument(
        "--superlink", required=True, help="HOST:PORT of the SuperLink (flwr 1.41: one port)"
    )
    security = deploy.add_mutually_exclusive_group()
    security.add_argument(
        "--root-certificates", type=Path, help="CA certificate of a TLS SuperLink (PEM)"
    )
    security.add_argument("--insecure", action="store_true", help="the SuperLink runs --insecure")
    deploy.add_argument("--out", type=Path, help="run directory on the SuperLink's machine")
    deploy.add_argument("--overwrite", action="store_true", help="replace an existing run")
    deploy.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its checkpoint"
    )
    _add_rounds(deploy)
    _add_round_timeout(deploy)
    deploy.add_argument(
        "--timeout", type=_seconds, default=86400.0, help="seconds to wait for the whole run"
    )
    deploy.set_defaults(handler=_cmd_flower_run)

    plot = commands.add_parser("plot", help="plot the metrics of one or more runs")
    plot.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    plot.add_argument("--out", type=Path, help="PNG path (default: in the first run's plots/)")
    plot.set_defaults(handler=_cmd_plot)

    inspect = commands.add_parser("inspect", help="what a run did and how it ended")
    inspect.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    inspect.set_defaults(handler=_cmd_inspect)

    config = commands.add_parser("config", help="print the configuration schema or a config")
    config.add_argument("config", nargs="?", type=Path, help="a TOML config to resolve and print")
    config.add_argument("--defaults", action="store_true", help="every key, default and meaning")
    config.add_argument(
        "--markdown",
        action="store_true",
        help="every key, default and meaning as the README's Markdown table",
    )
    _add_overrides(config)
    config.set_defaults(handler=_cmd_config)
    return parser


def _add_rounds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rounds",
        type=_positive_int,
        metavar="N",
        help="with --resume: continue the run, finished or not, to N rounds in all",
    )


def _add_round_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--round-timeout",
        type=_seconds,
        default=600.0,
        help="seconds to wait for a round's replies",
    )


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=1e-4 (repeatable)",
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from fedlora.commands.run import run_command

    return run_command(
        args.config,
        args.overrides,
        out=args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        rounds=args.rounds,
        progress=not args.no_progress,
    )


def _cmd_compare(args: argparse.Namespace) -> int:
    from fedlora.commands.compare import compare_command

    return compare_command(
        args.config,
        args.overrides,
        aggregators=_split_list(args.aggregators, "--aggregators"),
        seeds=[_int(s, "--seeds") for s in _split_list(args.seeds, "--seeds")],
        method_overrides=[(method, item) for method, item in args.method_overrides],
        out=args.out,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def _cmd_flower_sim(args: argparse.Namespace) -> int:
    from fedlora.commands.flower import flower_sim_command

    return flower_sim_command(
        args.config,
        args.overrides,
        out=args.out,
        overwrite=args.overwrite,
        cpus_per_client=args.cpus_per_client,
        gpus_per_client=args.gpus_per_client,
        timeout=args.round_timeout,
    )


def _cmd_flower_run(args: argparse.Namespace) -> int:
    from fedlora.commands.flower import flower_run_command

    return flower_run_command(
        args.config,
        args.overrides,
        superlink=args.superlink,
        root_certificates=args.root_certificates,
        insecure=args.insecure,
        out=args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        round_timeout=args.round_timeout,
        timeout=args.timeout,
        rounds=args.rounds,
    )


def _cmd_plot(args: argparse.Namespace) -> int:
    from fedlora.commands.inspect import plot_command

    return plot_command(args.runs, args.out)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from fedlora.commands.inspect import inspect_command

    return inspect_command(args.run_dir)


def _cmd_config(args: argparse.Namespace) -> int:
    from fedlora.commands.inspect import config_command

    return config_command(
        args.config, args.overrides, defaults=args.defaults, markdown=args.markdown
    )


def _split_list(value: str, option: str) -> list[str]:
    items = [part.strip() for part in value.split(",") if part.strip()]
    if not items:
        raise FedloraError(f"{option}: give at least one value")
    return items


def _positive_int(value: str) -> int:
    number = int(value) if value.strip().isdigit() else 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 1")
    return number


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (0 < seconds < math.inf):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds above 0")
    return seconds


def _int(value: str, option: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise FedloraError(f"{option}: {value!r} is not an integer") from None


if __name__ == "__main__":
    sys.exit(main())
