"""lth from Python: ``lth_core.run(recipe, ...)`` does what ``lth run`` does, in a notebook
or a script, with plugins defined right there.

The recipe is a YAML path, a bundled recipe's name or a dict; ``overrides`` set keys by
dotted path with Python values (``{"lottery.rate": 0.1}``); ``plugins`` are modules or
objects with hook implementations (a criterion or a model factory defined in a notebook
cell), registered for this call only on top of the installed ones. Mistakes raise one-line
:class:`lth_core.LthError` s, as the CLI prints them. The result is the run's summary (the
content of ``summary.json``) that also loads any round's ticket.
"""

from __future__ import annotations

import copy
import gc
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from lth_core.config import Recipe, raw_recipe, set_path, validate
from lth_core.errors import Interrupted, LthError, StopRequested
from lth_core.plugin_api.registry import get_plugin_manager, make_plugin_manager

if TYPE_CHECKING:  # checking a recipe (``prepared``) imports no torch: its mistakes are reported at once
    from lth_core.lottery.user_code import UserCode
    from lth_core.tickets.ticket import Ticket


class Summary(dict):
    """A finished run's summary (``summary.json``, or ``sweep.json`` for a sweep) and its folder.

    It is the plain dict the run wrote, plus ``out_dir`` and :meth:`ticket` to load a
    round's ticket without knowing the folder layout.
    """

    def __init__(self, record: Mapping[str, Any], out_dir: Path):
        super().__init__(record)
        self.out_dir = Path(out_dir)

    def ticket_dir(self, round: int, run: str = "ticket", trial: int | None = None, point: str | None = None) -> Path:
        """The folder of round ``round``'s ``run`` (``ticket`` or a control's name), of trial
        ``trial`` when the recipe has trials, and of sweep point ``point`` (its folder name)."""
        folder = self.out_dir / point if point is not None else self.out_dir
        if (folder / "trial_0").is_dir():
            folder = folder / f"trial_{0 if trial is None else trial}"
        elif trial not in (None, 0):
            raise LthError(f"{self.out_dir} holds one trial; trial={trial} does not exist")
        folder = folder / f"round_{round}"
        return folder if run == "ticket" else folder / f"control_{run}"

    def ticket(self, round: int, run: str = "ticket", trial: int | None = None, point: str | None = None) -> Ticket:
        """Round ``round``'s ticket (mask, start and trained weights, metadata), checked."""
        from lth_core.tickets.ticket import load_ticket

        return load_ticket(self.ticket_dir(round, run, trial, point))


def as_recipe(recipe: str | Path | Mapping | Recipe, overrides: Mapping[str, Any] | None = None,
              code: UserCode | None = None) -> Recipe:
    """A checked recipe from a YAML path, a bundled name, a dict or a :class:`Recipe`, with
    ``overrides`` (dotted paths to Python values) applied before it is checked; with
    ``code`` (the user's own module and datamodule) its ``model:`` and ``data:`` name them."""
    if isinstance(recipe, Recipe) and not overrides and code is None:
        return recipe
    if isinstance(recipe, (str, Path)):
        raw, path = raw_recipe(recipe)
        source, name = str(path), path.stem
    elif isinstance(recipe, Recipe):
        raw, source, name = recipe.to_dict(), recipe.source, recipe.name
    elif isinstance(recipe, Mapping):
        raw, source, name = dict(recipe), "<dict>", None
    else:
        raise LthError(f"a recipe is a YAML path, a bundled recipe's name or a dict, got {type(recipe).__name__}")
    raw = copy.deepcopy(raw)
    for key, value in dict(overrides or {}).items():
        if not isinstance(key, str) or not key:
            raise LthError(f"overrides keys are dotted recipe paths such as lottery.rate, got {key!r}")
        set_path(raw, key.split("."), copy.deepcopy(value), f"overrides[{key!r}]")
    if code is not None:
        from lth_core.lottery.user_code import user_recipe

        raw = user_recipe(raw, code.factory, code.datamodule)
    return validate(raw, source=source, name=name)


def plugin_manager(plugins: Iterable[Any]):
    """The installed plugins, plus ``plugins`` (modules or objects) for this call only."""
    plugins = list(plugins)
    if not plugins:
        return get_plugin_manager()
    pm = make_plugin_manager()
    for i, plugin in enumerate(plugins):
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{i}"
        if pm.is_registered(plugin) or pm.get_plugin(name) is not None:
            raise LthError(f"plugins: {name!r} is given twice or is already installed; pass each plugin once")
        pm.register(plugin, name=name)
    return pm


def prepared(recipe: str | Path | Mapping | Recipe, overrides: Mapping[str, Any] | None = None, plugins: Iterable[Any] = (),
             command: str | None = "run", code: UserCode | None = None) -> tuple[Recipe, Any]:
    """The checked recipe and the plugin manager that runs it: every mistake a recipe can
    hold (a key, a value, a plugin name or option, a section of another ``command``) is one
    ``LthError`` here, before anything trains or writes."""
    from lth_core.plugin_api.options import check_against_plugins
    from lth_core.plugin_api.registry import get_registry

    recipe = as_recipe(recipe, overrides, code)
    if code is not None:
        from lth_core.lottery.user_code import RegistersUserCode

        plugins = [*plugins, RegistersUserCode()]
    pm = plugin_manager(list(plugins))
    check_against_plugins(recipe, get_registry(pm), command=command)
    return recipe, pm


def default_out(recipe: Recipe) -> Path:
    """Where a recipe runs when no folder is given: ``runs/NAME-HASH``."""
    return Path("runs") / f"{recipe.name}-{recipe.hash()}"


def execute(recipe: Recipe, pm: Any, out: str | Path | None = None, say: Callable[[str], None] | None = None,
            code: UserCode | None = None, accept_plugin_changes: bool = False, quiet: bool = False) -> Summary:
    """Run a :func:`prepared` recipe into ``out``; every process of a data-parallel run
    arrives at the end before it returns. What the machine refuses (a full disk, a
    read-only folder) is one :class:`LthError` line, as on the command line."""
    from lth_core.plugin_api.datasets import preload
    from lth_core.plugin_api.registry import get_registry

    data = None if code else preload(recipe, get_registry(pm))  # before Lightning loads: a lower peak of memory (see preload)
    from lth_core.engines import data_parallel
    from lth_core.files import os_error_line
    from lth_core.lottery.progress import Progress
    from lth_core.lottery.trials import run_experiment
    from lth_core.plugin_api.provenance import accepting_changes
    from lth_core.quiet import quiet_lightning

    quiet_lightning()
    out = Path(out) if out is not None else default_out(recipe)
    progress = Progress.for_recipe(recipe, quiet=quiet)
    say = progress.wrap(say or (lambda text: print(text, file=sys.stderr, flush=True)))
    with ending_quietly_on_ctrl_c() as stopped:
        try:
            with accepting_changes(accept_plugin_changes), stop_on_ctrl_c():
                summary = Summary(run_experiment(recipe, out, say=say, pm=pm, code=code, progress=progress), out)
        except OSError as exc:  # lth's writers name their paths (OutputError); this is anything else
            raise LthError(os_error_line(exc)) from exc
        except (StopRequested, KeyboardInterrupt):
            stopped.append(True)
            progress.clear()
            from lth_core.lottery.tracking import abandon

            abandon()  # the W&B run ends here, so that the resumed run can continue it
    if stopped:  # raised here, not in the except block: the interrupted stack is already gone
        raise Interrupted(interrupted_line(out, code is not None))
    data_parallel.disconnect()  # data parallel: wait for every process
    del data  # held until every run of the recipe is done
    return summary


@contextmanager
def stop_on_ctrl_c() -> Iterator[None]:
    """Ctrl-C raises :class:`StopRequested` while the lottery runs, which Lightning passes
    on (it would turn a ``KeyboardInterrupt`` into ``sys.exit(1)``); the handler before is
    restored after. Only the main thread may set signal handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(_signum: int, _frame: Any) -> None:
        raise StopRequested()

    before = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@contextmanager
def ending_quietly_on_ctrl_c() -> Iterator[list[bool]]:
    """Yield a list the caller appends to when Ctrl-C stopped the run. The stack Ctrl-C
    interrupted can hold a coroutine W&B created and had not scheduled yet; freed later it
    prints "coroutine ... was never awaited" after lth's last line. Here that stack is freed
    (and collected) while exactly that warning is ignored, so the interrupted line stays last."""
    stopped: list[bool] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
        yield stopped
        if stopped:
            gc.collect()


def interrupted_line(out: Path, own_module: bool = False) -> str:
    """What Ctrl-C leaves the user: where the run is and the command that continues it."""
    again = ("lth_core.run(recipe, out=..., module=..., datamodule=...) with the same out" if own_module
             else f"lth run --resume {out}")
    return (f"interrupted: finished rounds and the last checkpoint are kept in {out}; "
            f"continue with: {again}")


def run(recipe: str | Path | Mapping | Recipe, out: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
        plugins: Iterable[Any] = (), say: Callable[[str], None] | None = None, module: Callable[[], Any] | None = None,
        datamodule: Any = None, accept_plugin_changes: bool = False, quiet: bool = False) -> Summary:
    """Run a recipe's lottery (every trial, or every point of its sweep) into ``out``
    (default ``runs/NAME-HASH``) and return its :class:`Summary`. ``lth run`` is this call.

    ``module`` (a class or a function building a fresh, randomly initialised
    ``LightningModule``) and ``datamodule`` (a ``LightningDataModule``) run the lottery on
    the user's own code: its training step, optimisers and logging as they are; the recipe
    then needs no ``model:`` or ``data:`` (see :mod:`lth_core.engines.foreign`). Rerunning
    into the same ``out`` reuses finished rounds and resumes a killed one at its last
    checkpoint. A rerun over rounds made by another version of a plugin the run uses is
    refused, naming it, unless ``accept_plugin_changes`` (``--accept-plugin-changes``).
    ``say`` receives the progress lines (default: printed to standard error, which
    terminals and notebooks both show); while a run trains, its step, last validation
    loss and ETA (and the whole lottery's) are redrawn in place on a terminal or in a
    notebook and printed as a plain line every minute otherwise. ``quiet`` shows neither
    (warnings still).
    """
    if (module is None) != (datamodule is None):
        raise LthError("module= and datamodule= go together: your LightningModule factory and the LightningDataModule it trains on")
    code = None
    if module is not None:
        from lth_core.lottery.user_code import UserCode

        code = UserCode(module, datamodule)
    recipe, pm = prepared(recipe, overrides, plugins, code=code)
    return execute(recipe, pm, out, say, code, accept_plugin_changes, quiet)
