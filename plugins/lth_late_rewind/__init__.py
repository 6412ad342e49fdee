"""Late rewinding (Frankle et al. 2020, "Linear Mode Connectivity and the LTH").

The survivors go back to θk, their values after k iterations of the dense run, instead of
θ0; the learning-rate schedule and the data order resume at step k too, as in OpenLTH.
A recipe selects it with::

    lottery:
      rewind: late
      rewind_options: {to: 500it}   # or 2ep (epochs of the training split), or 10% (of trainer.max_steps)

Round 0 (the dense run) saves θk: the policy is registered with ``collects=``, so when a
recipe rewinds late (the lottery's rewind or a control's) the core adds a callback to
round 0's ticket run that writes the model's full state dict at lottery step k (after the
k-th optimiser step; k = 0 is θ0) to ``round_0/rewind_<k>.safetensors``. The ``late``
policy loads that file in every later round and sets ``start_step = k``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lth_core import LthError, hookimpl

if TYPE_CHECKING:  # loading the plugin imports no torch: `lth plugins` and `lth --help` stay fast
    from torch import Tensor, nn

    from lth_core import Mask, RewindContext, RoundContext
    from lth_late_rewind.callback import SaveRewindPoint

POLICY = "late"
OPTION = "lottery.rewind_options.to"
FORMS = "Nit (optimiser steps, e.g. 500it), Nep (epochs, e.g. 2ep) or N% (of trainer.max_steps, e.g. 10%)"
#: Options of the rewind policies bundled with lth; a finetune control may share the recipe's options.
KNOWN_OPTIONS = ("to", "lr")
_STEPS = re.compile(r"\s*(\d+)\s*(it|ep)\s*")
_PERCENT = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*")


def rewind_step(to: Any, steps_per_epoch: int, max_steps: int) -> int:
    """The lottery step k that ``to`` means: ``500it`` -> 500, ``2ep`` -> 2 * steps per epoch,
    ``10%`` -> 10% of ``max_steps`` (rounded down). Anything else is an :class:`LthError`."""
    if isinstance(to, str):
        m = _STEPS.fullmatch(to)
        if m:
            n, unit = int(m.group(1)), m.group(2)
            return n if unit == "it" else n * steps_per_epoch
        m = _PERCENT.fullmatch(to)
        if m:
            pct = float(m.group(1))
            if not pct < 100.0:
                raise LthError(f"{OPTION} is {to!r}: a percentage of training must be below 100%")
            if max_steps <= 0:
                raise LthError(f"{OPTION} is {to!r}: a percentage needs trainer.max_steps; use {FORMS}")
            return int(pct * max_steps // 100)
    if to is None:
        raise LthError(f"rewind policy {POLICY!r} needs {OPTION}: {FORMS}")
    hint = f" (write {to}it for {to} steps)" if isinstance(to, int) and not isinstance(to, bool) and to >= 0 else ""
    raise LthError(f"{OPTION} is {to!r}{hint}; valid forms: {FORMS}")


def check_option_keys(options: dict, policy: str) -> None:
    """Refuse rewind options no bundled rewind policy understands (a typo such as ``t:``)."""
    unknown = sorted(set(options) - set(KNOWN_OPTIONS), key=str)
    if unknown:
        raise LthError(f"unknown option lottery.rewind_options.{unknown[0]} for rewind policy {policy!r}; valid: {', '.join(KNOWN_OPTIONS)}")


def rewind_file(folder: Path | str, k: int) -> Path:
    """Where round 0 keeps θk."""
    return Path(folder) / f"rewind_{k}.safetensors"


def late_rewind(model: nn.Module, mask: Mask, context: RewindContext) -> dict[str, Tensor]:
    """θk saved by round 0; the schedule and data order resume at step k."""
    check_option_keys(context.options, POLICY)
    k = rewind_step(context.options.get("to"), context.steps_per_epoch, context.max_steps)
    if context.max_steps > 0 and k >= context.max_steps:
        raise LthError(f"{OPTION}={context.options.get('to')!r} is step {k}, not before trainer.max_steps={context.max_steps}")
    path = rewind_file(Path(context.run_dir) / "round_0", k)
    if not path.is_file():
        raise LthError(
            f"late rewinding to step {k}: {path} does not exist; round 0 saves it only when it is trained with "
            f"lottery.rewind: late and {OPTION} giving step {k} (rerun into a new folder)"
        )
    from safetensors.torch import load_file

    state = load_file(str(path))
    own = model.state_dict()
    if set(state) != set(own):
        raise LthError(f"{path} does not hold this model's weights (differing names {sorted(set(state) ^ set(own))[:5]})")
    context.start_step = k
    return state


def save_rewind_point(context: RoundContext) -> SaveRewindPoint | None:
    """The callback that saves θk, for round 0's ticket run of a recipe that rewinds late."""
    if context.round != 0 or context.name != "ticket":
        return None
    options = context.recipe["lottery"]["rewind_options"]
    check_option_keys(options, POLICY)
    max_steps = context.recipe["trainer"].get("max_steps", -1)
    k = rewind_step(options.get("to"), len(context.data.train_loader(context.recipe["seed"])), max_steps)
    if max_steps > 0 and k >= max_steps:
        raise LthError(
            f"{OPTION}={options.get('to')!r} is step {k}, but training stops at trainer.max_steps={max_steps}: "
            "the rewind point must come before the end of training"
        )
    from lth_late_rewind.callback import SaveRewindPoint

    return SaveRewindPoint(k, rewind_file(context.out_dir, k), context)


def __getattr__(name: str) -> Any:
    """``SaveRewindPoint`` loads on first use: it is a Lightning callback (torch)."""
    if name == "SaveRewindPoint":
        from lth_late_rewind.callback import SaveRewindPoint

        return SaveRewindPoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_rewind_policies(register):
    register(POLICY, late_rewind, options=["to"], collects=save_rewind_point)
