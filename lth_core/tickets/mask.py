"""Masks are plain data: parameter name -> bool tensor, ``True`` = weight kept.

A :class:`Mask` knows nothing about training. :func:`prunable_parameters` says which
weights can be pruned (the weights of linear and convolutional layers; never biases or
normalisation parameters); :mod:`lth_core.tickets.pruning` turns scores into a new mask;
:class:`lth_core.engines.enforcer.MaskEnforcer` keeps pruned weights at zero in training.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lth_core.errors import LthError

PRUNABLE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights a lottery prunes: ``weight`` of every Linear/Conv layer, in model order.

    Biases and batch-norm parameters are never pruned (as in the paper). A model can
    override the choice by defining ``prunable_parameter_names() -> list[str]``.
    """
    params = dict(model.named_parameters())
    if hasattr(model, "prunable_parameter_names"):
        names = list(model.prunable_parameter_names())
        unknown = [n for n in names if n not in params]
        if unknown:
            raise LthError(f"prunable_parameter_names() names {unknown[:3]}, which are not parameters of the model")
        return {n: params[n] for n in names}
    out = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_MODULES) and getattr(module, "weight", None) is not None:
            name = f"{mod_name}.weight" if mod_name else "weight"
            out[name] = params[name]
    return out


class Mask(Mapping[str, Tensor]):
    """An immutable-by-convention mapping of parameter name -> bool tensor on the CPU."""

    def __init__(self, tensors: Mapping[str, Tensor]):
        self._t = {}
        for name, t in tensors.items():
            if t.dtype != torch.bool:
                raise TypeError(f"mask for {name!r} must be bool, got {t.dtype}")
            self._t[name] = t.detach().to("cpu")

    @classmethod
    def ones_like(cls, model: nn.Module) -> "Mask":
        """The dense mask: every prunable weight kept."""
        return cls({n: torch.ones_like(p, dtype=torch.bool, device="cpu") for n, p in prunable_parameters(model).items()})

    def __getitem__(self, name: str) -> Tensor:
        return self._t[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def kept(self) -> int:
        """How many weights the mask keeps, over every layer."""
        return int(sum(int(t.sum()) for t in self._t.values()))

    def total(self) -> int:
        """How many prunable weights the mask covers, kept or not."""
        return int(sum(t.numel() for t in self._t.values()))

    def density(self) -> float:
        """Fraction of prunable weights remaining (the paper's Pm)."""
        total = self.total()
        return self.kept() / total if total else 1.0

    def report(self) -> dict[str, dict]:
        """Per-layer counts: {name: {"kept", "total", "density"}}, counted from the tensors."""
        return {
            n: {"kept": int(t.sum()), "total": t.numel(), "density": float(t.sum()) / max(t.numel(), 1)}
            for n, t in self._t.items()
        }

    def intersection(self, other: "Mask") -> "Mask":
        """The weights both masks keep."""
        return Mask({n: self[n] & other[n] for n in self})

    def union(self, other: "Mask") -> "Mask":
        """The weights either mask keeps."""
        return Mask({n: self[n] | other[n] for n in self})

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Mask)
            and set(self) == set(other)
            and all(torch.equal(self[n], other[n]) for n in self)
        )

    def __repr__(self) -> str:
        return f"Mask({len(self)} layers, density={self.density():.4f})"


def check_mask_fits(mask: Mask, model: nn.Module, source: str = "mask") -> None:
    """Refuse a mask whose names or shapes differ from the model's prunable weights."""
    params = prunable_parameters(model)
    missing, extra = set(params) - set(mask), set(mask) - set(params)
    if missing or extra:
        raise LthError(
            f"{source} does not fit this model: missing layers {sorted(missing) or '-'}, "
            f"unknown layers {sorted(extra) or '-'}"
        )
    for n, p in params.items():
        if tuple(mask[n].shape) != tuple(p.shape):
            raise LthError(f"{source} does not fit this model: {n} is {tuple(mask[n].shape)}, model has {tuple(p.shape)}")


def check_fits_mask(current: Mask, new: object, who: str = "a callback") -> None:
    """Refuse a mask that is not a :class:`Mask` of ``current``'s layers, shapes and bool tensors."""
    if not isinstance(new, Mask):
        raise LthError(f"{who} set a mask of type {type(new).__name__}; it must be an lth_core.Mask")
    if set(new) != set(current):
        raise LthError(f"{who} set a mask for layers {sorted(new)}; this run prunes {sorted(current)}")
    for n, m in new.items():
        if m.dtype != torch.bool or m.shape != current[n].shape:
            raise LthError(f"{who} set a mask whose {n} is {m.dtype} {tuple(m.shape)}; it must be torch.bool {tuple(current[n].shape)}")


def check_tighter(current: Mask, new: object, who: str = "a callback", rule: str = "masks may only tighten") -> None:
    """Refuse a mask that does not fit ``current`` or revives a weight it prunes.

    A weight at zero has lost its value; reviving it would not be the run the recipe
    describes, so masks set during training (and a criterion's own masks) only tighten,
    unless a callback owns the run's mask (``owns_mask = True``: dynamic sparse training).
    """
    check_fits_mask(current, new, who)
    for n, m in new.items():
        if bool((m & ~current[n]).any()):
            raise LthError(f"{who}'s mask revives {int((m & ~current[n]).sum())} pruned weights of {n}; {rule}")


def parameters_by_name(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Parameter]:
    """The parameters ``names`` call by their plain names (``fc1.weight``). A weight under a
    ``torch.nn.utils.parametrize`` parametrization (a supermask's masked weight) is its
    original tensor, which the parametrization computes from and an optimiser updates."""
    params = dict(model.named_parameters())
    out = {}
    for name in names:
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        if name not in params and parametrize.is_parametrized(module, leaf):
            out[name] = getattr(module.parametrizations, leaf).original
        else:
            out[name] = params[name]
    return out


def apply_mask(model: nn.Module, mask: Mask) -> None:
    """Zero every pruned weight of ``model`` in place."""
    params = parameters_by_name(model, mask)
    with torch.no_grad():
        for n, m in mask.items():
            params[n].mul_(m.to(params[n].device, params[n].dtype))


def choose_prunable(model: nn.Module, spec: Mapping | None) -> nn.Module:
    """``model`` with the prunable weights a recipe's ``lottery.prunable`` names: the default
    ones (:func:`prunable_parameters`), plus parameters ``include`` matches (a glob over
    parameter names, or over module names for their ``weight``), minus those ``exclude``
    matches (``last``: the last default one). The choice becomes the model's own
    ``prunable_parameter_names``, so every mask, ticket and check of the run follows it."""
    if not spec or not (spec.get("include") or spec.get("exclude")):
        return model
    params = dict(model.named_parameters())
    default = list(prunable_parameters(model))
    chosen = default + [n for n in _matching(spec.get("include", []), list(params), "include", default) if n not in default]
    dropped = set(_matching(spec.get("exclude", []), chosen, "exclude", default))
    names = [n for n in chosen if n not in dropped]
    if not names:
        raise LthError("lottery.prunable leaves no weight to prune")
    model.prunable_parameter_names = lambda: list(names)
    return model


def _matching(patterns: list[str], names: list[str], key: str, default: list[str]) -> list[str]:
    """The parameter names each pattern means; a pattern that means none is a mistake."""
    found: list[str] = []
    for pattern in patterns:
        if pattern == "last" and default:
            hits = [default[-1]]
        else:
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, f"{pattern}.weight")]
        if not hits:
            raise LthError(f"lottery.prunable.{key}: {pattern!r} matches no parameter; valid: {', '.join(names)}, last, or a glob")
        found += [n for n in hits if n not in found]
    return found
