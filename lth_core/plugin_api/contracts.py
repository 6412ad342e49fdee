"""What the core checks of plugin results before it uses them, and how it says what broke.

Every check raises :class:`lth_core.errors.PluginError` with one line naming the plugin
(``source``: "model 'x' (plugin 'y')") and what it returned against what was expected,
so a broken plugin stops the run at once instead of surfacing later as a traceback far
from its cause. ``lth_core/plugin_api/hookspecs.py`` states each contract for plugin authors.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lth_core.data.loaders import DataModule
from lth_core.errors import LthError, PluginError
from lth_core.tickets.mask import Mask, check_tighter, prunable_parameters
from lth_core.plugin_api.registry import call_plugin


def check_model(model: Any, source: str) -> None:
    """A model must be an ``nn.Module`` with something to prune: a lottery of nothing is a mistake."""
    if not isinstance(model, nn.Module):
        raise PluginError(f"{source} returned {type(model).__name__}, expected an nn.Module")
    if not call_plugin(source, prunable_parameters, model):
        raise PluginError(f"{source} returned a {type(model).__name__} with no prunable weights, expected at least one "
                          "nn.Linear or nn.Conv layer (or a prunable_parameter_names() that names some)")


def check_finite_weights(model: nn.Module, source: str) -> None:
    """NaN or infinite weights would only show as a diverged first step, blamed on the learning rate."""
    for n, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise PluginError(f"{source} left {int((~torch.isfinite(t)).sum())} NaN or infinite values in {n}, expected finite weights")


def probe(model: nn.Module, source: str, data: DataModule) -> None:
    """Two real training inputs must come out as finite logits ``(2, num_classes)``.

    A wrong input layer or head then fails here, naming the model, not in Lightning's
    first step. Evaluation mode, no gradients and a forked RNG leave the model, its
    buffers and the random streams exactly as they were.
    """
    x = data.inputs("train", slice(0, 2))
    expected, was_training = (x.shape[0], data.num_classes), model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = call_plugin(f"{source} on a probe batch shaped {tuple(x.shape)}", model, x)
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or tuple(out.shape) != expected or not out.is_floating_point():
        got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise PluginError(f"{source} maps a probe batch shaped {tuple(x.shape)} to {got}, expected float logits shaped {expected}")
    if not bool(torch.isfinite(out).all()):
        raise PluginError(f"{source} maps a probe batch shaped {tuple(x.shape)} to NaN or infinite logits, expected finite ones")


def _kind(dtype: torch.dtype) -> str:
    """What a value standing for a tensor of ``dtype`` must be: real floating, bool or integer."""
    if dtype == torch.bool:
        return "a bool tensor"
    if dtype.is_floating_point:
        return "a real floating tensor"
    return "a complex tensor" if dtype.is_complex else "an integer tensor"


def tensor_problem(value: Any, like: Tensor) -> str | None:
    """Why ``value`` cannot be loaded in place of ``like`` (``None`` if it can).

    Another precision of the same kind is fine (it is cast); complex, bool or integer
    values for floating weights are mistakes, and so are NaN or infinite weights: a mask
    cannot zero them (NaN times 0 is NaN).
    """
    if not isinstance(value, Tensor):
        return f"as {type(value).__name__}, expected a tensor"
    if value.shape != like.shape:
        return f"with the wrong shape {tuple(value.shape)}, expected {tuple(like.shape)}"
    if _kind(value.dtype) != _kind(like.dtype):
        return f"as {value.dtype}, expected {_kind(like.dtype)} (the model's {like.dtype})"
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        return f"with {int((~torch.isfinite(value)).sum())} NaN or infinite values, expected finite ones"
    return None


def check_state(state: Any, own: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """A rewind policy's state dict, checked entry by entry and cast to the model's dtypes.

    A dict with other keys than the model's names the keys it lacks (and those it should
    not have): a policy that rewinds only the prunable weights learns it must return the
    biases too."""
    if not isinstance(state, dict):
        raise PluginError(f"{source} must return the model's full state dict ({len(own)} entries), got {type(state).__name__}")
    missing, extra = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing or extra:
        problems = [f"lacks {len(missing)}: {_some(missing)}"] * bool(missing)
        problems += [f"has {len(extra)} the model does not: {_some(extra)}"] * bool(extra)
        raise PluginError(f"{source} must return the model's full state dict ({len(own)} entries); its dict "
                          + " and ".join(problems))
    for n, t in state.items():
        problem = tensor_problem(t, own[n])
        if problem:
            raise PluginError(f"{source} returned {n} {problem}")
    return {n: t.to(own[n].dtype) for n, t in state.items()}


def _some(keys: list, shown: int = 6) -> str:
    """Up to ``shown`` keys, then how many more."""
    more = f", ... ({len(keys) - shown} more)" if len(keys) > shown else ""
    return ", ".join(map(str, keys[:shown])) + more


def check_callback(cb: Any, source: str) -> pl.Callback:
    """Lightning would refuse anything else with a traceback that names no plugin."""
    if not isinstance(cb, pl.Callback):
        raise PluginError(f"{source} returned {type(cb).__name__}, expected a pytorch_lightning.Callback")
    return cb


def _suspects(origins: dict[int, str]) -> str:
    """Who can have done what no exception points at: the plugins whose callbacks ran."""
    sources = list(dict.fromkeys(origins.values()))
    if len(sources) == 1:
        return sources[0]
    return f"one of this run's callbacks ({'; '.join(sources)})" if sources else "this run"


def check_final_mask(start: Mask, module: Any, origins: dict[int, str], round_: int, name: str) -> Mask:
    """The mask in force when training ended, checked again before it becomes the ticket.

    ``set_mask`` checks a callback's mask, but a callback can assign ``module.mask``
    itself: the ticket would keep a mask that revives weights or does not fit, or whose
    pruned weights the enforcer never zeroed.
    """
    problem = mask_problem(start, module)
    if problem:
        raise broken_mask(origins, round_, name, problem)
    return module.mask


def mask_problem(start: Mask, module: Any, weights: bool = True) -> str | None:
    """What is wrong with ``module.mask`` against the run's starting mask (``None``: nothing).

    Same layers and shapes, bool, only tightened; with ``weights``, also the trained
    weights exactly zero where it prunes.
    """
    try:
        check_tighter(start, module.mask)
    except LthError as exc:
        return str(exc)
    return _unzeroed(module.mask, module.model) if weights else None


def broken_mask(origins: dict[int, str], round_: int, name: str, problem: str) -> PluginError:
    return PluginError(
        f"{_suspects(origins)} broke the mask of round {round_} [{name}]: {problem} (prune during training with "
        "module.set_mask(mask), not by assigning module.mask); nothing of this run was saved as a ticket, earlier rounds are kept"
    )


def _unzeroed(mask: Mask, model: nn.Module) -> str | None:
    """Which layer has weights that are not zero where ``mask`` prunes them (``None``: none has)."""
    params = dict(model.named_parameters())
    for n, m in mask.items():
        live = int((params[n].detach()[~m.to(params[n].device)] != 0).sum())
        if live:
            return f"{n} has {live} nonzero weights where the mask prunes them"
    return None
