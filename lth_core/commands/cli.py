"""The ``lth`` command: every subcommand is registered through ``register_commands``.

lth's own commands come from its core plugins (:data:`lth_core.plugin_api.registry.CORE_PLUGINS`,
one module per command family in this package), registered exactly as a plugin's; the
entry-point plugins are loaded only for a command that is not lth's own (or for ``lth
--help``), so ``lth report`` never imports them (they import torch).

User mistakes end with one line on stderr (``lth: error: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable

from lth_core.errors import LthError, PluginError, one_line
from lth_core.plugin_api.registry import (Entry, Registry, call_plugin, core_plugin_manager, get_plugin_manager,
                                          get_registry, is_core, raised)

EXIT_USER_ERROR = 2


def _add_command(sub: argparse._SubParsersAction, entry: Entry) -> None:
    """One registered command as a subcommand. A plugin's code runs through
    :func:`call_plugin`, so its bugs are one line naming it; lth's own keep their traceback."""
    source = f"command {entry.name!r} (plugin {entry.plugin!r})"
    if not callable(entry.obj):
        raise PluginError(f"plugin {entry.plugin!r} registered the command {entry.name!r} without a run function")
    parser = sub.add_parser(entry.name, help=entry.extra.get("help", ""), description=entry.extra.get("help", ""))
    configure = entry.extra.get("configure")
    if configure is not None and is_core(entry.plugin):
        configure(parser)
    elif configure is not None:
        call_plugin(source, configure, parser)
    run = entry.obj if is_core(entry.plugin) else functools.partial(_run_plugin_command, source, entry.obj)
    parser.set_defaults(func=run)


def _run_plugin_command(source: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """A plugin's command: its own LthError reads as it wrote it (a user's mistake, said by
    the command); any other exception is a bug of the plugin, one line naming it."""
    try:
        return run(args)
    except LthError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the plugin raised, say whose it was
        raise raised(source, exc) from exc


def _command_registry(argv: list[str]) -> Registry:
    """lth's own plugins for one of its commands; every plugin for another (or ``lth --help``)."""
    core = get_registry(core_plugin_manager())
    if "--version" in argv:
        return core
    word = next((a for a in argv if not a.startswith("-")), None)
    return core if word in core.kinds["commands"] else get_registry(get_plugin_manager())


def build_parser(registry: Registry | None = None) -> argparse.ArgumentParser:
    """The parser for every command in ``registry`` (default: lth's own): lth's first, in
    their registration order, then the plugins' by name."""
    from lth_core.version import __version__

    parser = argparse.ArgumentParser(prog="lth", description="Lottery-ticket experiments on PyTorch Lightning.")
    parser.add_argument("--version", action="version", version=f"lth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = list((registry or get_registry(core_plugin_manager())).kinds["commands"].values())
    plugins = sorted((e for e in commands if not is_core(e.plugin)), key=lambda e: e.name)
    for entry in [e for e in commands if is_core(e.plugin)] + plugins:
        _add_command(sub, entry)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(_command_registry(argv)).parse_args(argv)
        return args.func(args)
    except LthError as exc:
        ddp = sys.modules.get("lth_core.engines.collectives")  # loaded only once a run has started
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
