"""The ``lth`` command: every subcommand is registered through ``register_commands``.

lth's own commands come from its core plugins (:data:`lth_core.plugin_api.registry.CORE_PLUGINS`,
one module per command family in this package), registered exactly as a plugin's; the
entry-point plugins are loaded only for a command that is not lth's own (or for ``lth
--help``), so ``lth report`` never imports them (they import torch).

User mistakes end with one line on stderr (``lth: error: ...``) and exit status 2, and so
does anything the machine refuses (an OSError: a full disk, a read-only file system).
``--traceback`` (anywhere on the command line) or ``LTH_TRACEBACK=1`` prints the whole
traceback above that line, for plugin authors and bug reports.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from typing import Callable

from lth_core.errors import LthError, PluginError, one_line
from lth_core.plugin_api.registry import (Entry, Registry, call_plugin, core_plugin_manager, get_plugin_manager,
                                          get_registry, is_core, raised)

EXIT_USER_ERROR = 2
TRACEBACK_FLAG = "--traceback"
TRACEBACK_ENV = "LTH_TRACEBACK"


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
    parser.add_argument(TRACEBACK_FLAG, action="store_true",
                        help=f"on an error, print the whole traceback above its one line (or set {TRACEBACK_ENV}=1); anywhere on the line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = list((registry or get_registry(core_plugin_manager())).kinds["commands"].values())
    plugins = sorted((e for e in commands if not is_core(e.plugin)), key=lambda e: e.name)
    for entry in [e for e in commands if is_core(e.plugin)] + plugins:
        _add_command(sub, entry)
    return parser


def wants_traceback(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether to print tracebacks, and ``argv`` without ``--traceback`` (before any ``--``),
    so the flag works after the command too (``lth run R --traceback``)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    flagged = TRACEBACK_FLAG in argv[:cut]
    rest = [a for a in argv[:cut] if a != TRACEBACK_FLAG] + argv[cut:]
    return flagged or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"), rest


def _fail(exc: BaseException, line: str, show_traceback: bool) -> int:
    """Print the error's line (last, after its traceback when asked for) and return 2."""
    if show_traceback:
        traceback.print_exception(exc, file=sys.stderr)
    ddp = sys.modules.get("lth_core.engines.collectives")  # loaded only once a run has started
    who = f"process {ddp.rank()}: " if ddp is not None and ddp.rank() else ""
    print(f"lth: error: {who}{one_line(line)}", file=sys.stderr)  # one line, whatever the message holds
    return EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    show_traceback, argv = wants_traceback(sys.argv[1:] if argv is None else list(argv))
    try:
        args = build_parser(_command_registry(argv)).parse_args(argv)
        return args.func(args)
    except LthError as exc:
        return _fail(exc, str(exc), show_traceback)
    except BrokenPipeError:  # `lth plugins --json | head`
        sys.stderr.close()
        return 0
    except OSError as exc:  # the machine refused something lth's writers did not name (they raise OutputError)
        from lth_core.files import os_error_line

        return _fail(exc, os_error_line(exc), show_traceback)
    except KeyboardInterrupt as exc:  # a run says where it is (Interrupted); anything else, in general
        line = str(exc) or "interrupted; finished rounds and the last checkpoint are kept, rerun the same command (or lth run --resume DIR) to continue"
        print(f"lth: {line}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
