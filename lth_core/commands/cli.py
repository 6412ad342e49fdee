"""The ``lth`` command: run recipes, list plugins and recipes, install plugins.

User mistakes end with one line on stderr (``lth: error: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import runpy
import sys
import warnings
from pathlib import Path

from lth_core.errors import LthError, one_line

EXIT_USER_ERROR = 2


def _quiet_lightning() -> None:
    """Lightning prints device banners for every Trainer; a lottery makes dozens."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*is an invalid name for a W&B.*")
    warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")


def cmd_run(args: argparse.Namespace) -> int:
    from lth_core.config import load_recipe

    if args.resume is not None:
        from lth_core.commands.resume import resume_args

        resume_args(args)  # the run folder's own recipe.yaml, into that folder
    elif args.recipe is None:
        raise LthError("lth run needs a RECIPE (a YAML file or a bundled recipe name), or --resume DIR")
    recipe = load_recipe(args.recipe, args.set)  # recipe mistakes fail before torch loads
    from lth_core.plugin_api.registry import get_registry
    from lth_core.plugin_api.options import check_against_plugins
    from lth_core.lottery.trials import run_experiment

    check_against_plugins(recipe, get_registry(), command="run")  # a section of another command names it
    _quiet_lightning()
    out = Path(args.out) if args.out else Path("runs") / f"{recipe.name}-{recipe.hash()}"
    from lth_core.engines import data_parallel as distributed

    if distributed.is_writer():  # data parallel: the other processes run the same command quietly
        print(f"lth: recipe {recipe.source} (hash {recipe.hash()}) -> {out}", file=sys.stderr)
    run_experiment(recipe, out, say=lambda s: print(s, file=sys.stderr, flush=True))
    distributed.disconnect()  # data parallel: wait for every process; rank 0 answers
    if distributed.is_writer():
        print(out / ("sweep.json" if recipe["sweep"] else "summary.json"))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lth_core.reporting.report import write_report

    rounds = None
    if args.rounds:
        try:
            rounds = [int(r) for r in args.rounds.split(",")]
        except ValueError:
            raise LthError(f"--rounds {args.rounds!r} must be comma-separated round numbers, e.g. 0,3,7") from None
    report = write_report(args.dirs, args.out, rounds)
    if args.wandb:
        from lth_core.lottery.tracking import log_report_run

        log_report_run(args.dirs, args.out, project=args.project)
    print(report)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from lth_core.plugin_api.registry import describe_plugins

    plugins = describe_plugins()
    if args.json:
        print(json.dumps(plugins, indent=2))
        return 0
    for p in plugins:
        print(f"{p['name']} ({p['distribution']} {p['version']})")
        for kind, names in p["registers"].items():
            print(f"  {kind}: {', '.join(names)}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from lth_core.config import bundled_recipes, read_yaml

    for name, path in sorted(bundled_recipes().items()):
        raw = read_yaml(path) or {}
        desc = raw.get("description", "") if isinstance(raw, dict) else ""
        print(f"{name:<28} {desc.strip().splitlines()[0] if desc else ''}")
        if args.paths:
            print(f"{'':<28} {path}")
    return 0


def _pip(*pip_args: str) -> int:
    """Run pip in this interpreter, so a plugin lands where lth runs (as llm does)."""
    argv = sys.argv
    sys.argv = ["pip", *pip_args]
    try:
        runpy.run_module("pip", run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = argv
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    extra = ["-e"] if args.editable else []
    return _pip("install", *(["--upgrade"] if args.upgrade else []), *extra, *args.packages)


def cmd_uninstall(args: argparse.Namespace) -> int:
    return _pip("uninstall", *(["-y"] if args.yes else []), *args.packages)


def _merge_options(pairs: list[str]) -> dict:
    """``--option max_iter=50`` -> {"max_iter": 50}; values are read as YAML."""
    from lth_core.config import parse_override

    options = {}
    for text in pairs:
        path, value = parse_override(text)
        if len(path) != 1:
            raise LthError(f"--option {text!r} must look like name=value")
        options[path[0]] = value
    return options


def cmd_merge(args: argparse.Namespace) -> int:
    from lth_core.commands.merge import merge_tickets

    _quiet_lightning()
    merge_tickets(args.tickets, args.strategy, args.out, recipe=args.recipe, overrides=args.set,
                  options=_merge_options(args.option), points=args.points,
                  say=lambda s: print(s, file=sys.stderr, flush=True))
    print(Path(args.out) / "merge.json")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lth_core.commands.export import export_ticket, format_export

    _quiet_lightning()
    record = export_ticket(args.ticket, args.out, recipe=args.recipe, sparse_below=args.sparse_below)
    print(format_export(record), file=sys.stderr)
    print(args.out)
    return 0


def add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Every command a plugin registers (``register_commands``) becomes a subcommand."""
    from lth_core.errors import PluginError
    from lth_core.plugin_api.registry import call_plugin, get_registry

    builtin = set(sub.choices)
    for name, entry in sorted(get_registry().kinds["commands"].items()):
        if name in builtin:
            raise PluginError(f"plugin {entry.plugin!r} registers the command {name!r}, which is built into lth; rename it")
        if not callable(entry.obj):
            raise PluginError(f"plugin {entry.plugin!r} registered the command {name!r} without a run function")
        parser = sub.add_parser(name, help=entry.extra.get("help", ""), description=entry.extra.get("help", ""))
        configure = entry.extra.get("configure")
        if configure is not None:
            call_plugin(f"command {name!r} (plugin {entry.plugin!r})", configure, parser)
        parser.set_defaults(func=functools.partial(_run_plugin_command, f"command {name!r} (plugin {entry.plugin!r})", entry.obj))


def _run_plugin_command(source: str, run, args: argparse.Namespace) -> int:
    """A plugin's command: its own LthError reads as it wrote it (a user's mistake, said by
    the command); any other exception is a bug of the plugin, one line naming it."""
    from lth_core.plugin_api.registry import raised

    try:
        return run(args)
    except LthError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the plugin raised, say whose it was
        raise raised(source, exc) from exc


def _wants_plugin_commands(argv: list[str]) -> bool:
    """Load plugins only for a command that is not built in (or for ``lth --help``)."""
    if "--version" in argv:
        return False
    word = next((a for a in argv if not a.startswith("-")), None)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return word not in sub.choices


def build_parser(plugin_commands: bool = False) -> argparse.ArgumentParser:
    from lth_core import __version__

    parser = argparse.ArgumentParser(prog="lth", description="Lottery-ticket experiments on PyTorch Lightning.")
    parser.add_argument("--version", action="version", version=f"lth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a recipe (a YAML file or a bundled recipe name)")
    run.add_argument("recipe", nargs="?")
    run.add_argument("--out", help="run folder (default: runs/NAME-HASH); rerunning into it resumes")
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR (a killed run resumes at its last checkpoint) with DIR/recipe.yaml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key, e.g. lottery.rate=0.1")
    run.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="figures and report.md from run folders")
    report.add_argument("dirs", nargs="+", metavar="DIR")
    report.add_argument("--out", required=True, help="folder for the PNG figures and report.md")
    report.add_argument("--rounds", help="rounds for the training-curve figure, e.g. 0,3,7 (default: closest to the paper's levels)")
    report.add_argument("--wandb", action="store_true", help="also log the figures and tables to a W&B run")
    report.add_argument("--project", default="lth", help="W&B project for --wandb")
    report.set_defaults(func=cmd_report)

    plugins = sub.add_parser("plugins", help="list installed plugins and what they register")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.set_defaults(func=cmd_plugins)

    recipes = sub.add_parser("recipes", help="list bundled recipes")
    recipes.add_argument("--paths", action="store_true", help="show where each file is")
    recipes.set_defaults(func=cmd_recipes)

    install = sub.add_parser("install", help="pip install plugins into lth's environment")
    install.add_argument("packages", nargs="+")
    install.add_argument("-U", "--upgrade", action="store_true")
    install.add_argument("-e", "--editable", action="store_true")
    install.set_defaults(func=cmd_install)

    uninstall = sub.add_parser("uninstall", help="pip uninstall plugins from lth's environment")
    uninstall.add_argument("packages", nargs="+")
    uninstall.add_argument("-y", "--yes", action="store_true")
    uninstall.set_defaults(func=cmd_uninstall)

    merge = sub.add_parser("merge", help="combine two or more tickets with a merge strategy; writes DIR/merge.json")
    merge.add_argument("tickets", nargs="+", metavar="TICKET", help="ticket folders, e.g. RUN/round_3")
    merge.add_argument("--strategy", required=True, help="a registered merge strategy (see `lth plugins`)")
    merge.add_argument("--out", required=True, metavar="DIR", help="a new folder for merge.json and the merged ticket")
    merge.add_argument("--recipe", help="recipe for the model, data and retraining (default: the first ticket's run folder's)")
    merge.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    merge.add_argument("--option", action="append", default=[], metavar="NAME=VALUE", help="a strategy option, e.g. max_iter=50")
    merge.add_argument("--points", type=int, default=11, help="points on the linear path (>= 11)")
    merge.set_defaults(func=cmd_merge)

    export = sub.add_parser("export", help="a ticket as a compact torch.export model that runs without lth; writes FILE and FILE.json")
    export.add_argument("ticket", metavar="TICKET", help="a ticket folder, e.g. RUN/round_10")
    export.add_argument("--out", required=True, metavar="FILE", help="the exported program, e.g. model.pt2")
    export.add_argument("--recipe", help="recipe for the model and data (default: the ticket's run folder's)")
    export.add_argument("--sparse-below", type=float, default=0.3, metavar="DENSITY",
                        help="store fully connected layers at or below this weight density as nonzeros only (default 0.3; 0 = all dense)")
    export.set_defaults(func=cmd_export)
    if plugin_commands:
        add_plugin_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(plugin_commands=_wants_plugin_commands(argv)).parse_args(argv)
        return args.func(args)
    except LthError as exc:
        ddp = sys.modules.get("lth_core.engines.data_parallel")  # loaded only once a run has started
        who = f"process {ddp.rank()}: " if ddp is not None and ddp.rank() else ""
        print(f"lth: error: {who}{one_line(exc)}", file=sys.stderr)  # one line, whatever the message holds
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `lth plugins --json | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("lth: interrupted; finished rounds and the last checkpoint are kept, rerun the same command (or lth run --resume DIR) to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
