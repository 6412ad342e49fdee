"""Weight matching (Ainsworth, Hayase & Srinivasa 2022, "Git Re-Basin", Algorithm 2).

Hidden units of a network can be permuted without changing what it computes: permute the
rows (outputs) of layer l and the matching columns (inputs) of layer l+1. Weight matching
looks for the permutation of network B's hidden units that brings its weights closest to
A's: for each hidden layer l, with the other permutations fixed, maximise
``sum <W_a, P W_b>`` over every weight touching that layer (layer l's rows and bias, layer
l+1's columns) by a linear assignment; sweep the layers in random order until a sweep
changes nothing.

Networks are chains of ``Linear`` / ``Conv2d`` layers (:func:`layer_chain`). Where a
convolution feeds a linear layer through a flatten, a channel permutation moves whole
blocks of ``height x width`` input columns, since ``Flatten`` of NCHW is channel-major.
Everything here is a pure function of state dicts and index tensors; masks are permuted
with exactly the same index operations as the weights they belong to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from lth_core import LthError

#: Models whose forward pass is exactly their chain of Linear/Conv2d layers with
#: elementwise activations, max-pools, dropout and one flatten between them.
SUPPORTED_MODELS = ("conv2", "conv4", "conv6", "lenet300", "mlp")


@dataclass(frozen=True)
class Layer:
    """One layer of the chain: its module name and kind (``linear`` or ``conv``)."""

    name: str
    kind: str

    @property
    def weight(self) -> str:
        return f"{self.name}.weight"

    @property
    def bias(self) -> str:
        return f"{self.name}.bias"


def layer_chain(model: nn.Module, model_name: str) -> list[Layer]:
    """The model's Linear/Conv2d layers in forward order; refuse other architectures."""
    if model_name not in SUPPORTED_MODELS:
        raise LthError(f"weight matching supports the models {', '.join(SUPPORTED_MODELS)}; the tickets are {model_name!r}")
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            layers.append(Layer(name, "linear"))
        elif isinstance(module, nn.Conv2d):
            layers.append(Layer(name, "conv"))
        elif len(list(module.parameters(recurse=False))):
            raise LthError(f"weight matching cannot permute {type(module).__name__} layer {name!r}")
    return layers


def _out_perm(state: dict[str, Tensor], layer: Layer, perm: Tensor) -> None:
    for key in (layer.weight, layer.bias):
        if key in state:
            state[key] = state[key][perm]


def _in_perm(state: dict[str, Tensor], layer: Layer, prev: Layer, perm: Tensor) -> None:
    key = layer.weight
    if key not in state:
        return
    w = state[key]
    if layer.kind == "linear" and prev.kind == "conv":
        out, fan_in = w.shape
        channels = perm.numel()
        state[key] = w.reshape(out, channels, fan_in // channels)[:, perm].reshape(out, fan_in)
    else:
        state[key] = w[:, perm]


def permute(state: dict[str, Tensor], chain: list[Layer], perms: list[Tensor]) -> dict[str, Tensor]:
    """``state`` with hidden units permuted: new unit ``i`` of layer ``l`` is old ``perms[l][i]``.

    Works on full state dicts and on masks alike (keys that are absent are skipped).
    """
    out = dict(state)
    for l, perm in enumerate(perms):
        _out_perm(out, chain[l], perm)
        _in_perm(out, chain[l + 1], chain[l], perm)
    return out


def _rows(w: Tensor) -> Tensor:
    """Layer weights as (units, everything else) in float64."""
    return w.reshape(w.shape[0], -1).double()


def _as_inputs(w: Tensor, layer: Layer, prev: Layer, units: int) -> Tensor:
    """The next layer's weights seen from its inputs: (units, everything else)."""
    if layer.kind == "linear" and prev.kind == "conv":
        out, fan_in = w.shape
        w = w.reshape(out, units, fan_in // units)
    return w.transpose(0, 1).reshape(units, -1).double()


def _cost(a: dict[str, Tensor], b: dict[str, Tensor], chain: list[Layer], perms: list[Tensor], l: int) -> Tensor:
    """cost[i, j] = similarity of A's unit i and B's unit j over the weights touching layer l.

    B is seen with every permutation but layer l's applied.
    """
    others = [p if k != l else torch.arange(p.numel()) for k, p in enumerate(perms)]
    pb = permute(b, chain, others)
    layer, nxt = chain[l], chain[l + 1]
    units = a[layer.weight].shape[0]
    cost = _rows(a[layer.weight]) @ _rows(pb[layer.weight]).T
    if layer.bias in a:
        cost += torch.outer(a[layer.bias].double(), pb[layer.bias].double())
    cost += _as_inputs(a[nxt.weight], nxt, layer, units) @ _as_inputs(pb[nxt.weight], nxt, layer, units).T
    return cost


def check_chain(state: dict[str, Tensor], chain: list[Layer]) -> None:
    """Each layer's outputs are the next one's inputs (a flatten may spread channels)."""
    for layer, nxt in zip(chain[:-1], chain[1:]):
        units, fan_in = state[layer.weight].shape[0], state[nxt.weight].shape[1]
        if fan_in != units and not (nxt.kind == "linear" and layer.kind == "conv" and fan_in % units == 0):
            raise LthError(f"weight matching: {layer.name} has {units} outputs but {nxt.name} takes {fan_in} inputs")


def match(a: dict[str, Tensor], b: dict[str, Tensor], chain: list[Layer], generator: torch.Generator,
          max_iter: int = 100) -> tuple[list[Tensor], dict]:
    """Permutations of B's hidden units that best match A's weights (coordinate descent).

    Starts from the identity; a layer's permutation changes only when the assignment
    strictly improves its objective, so the sweep ends at a fixed point. Returns the
    permutations and ``{"sweeps", "converged", "changed_units"}``.
    """
    check_chain(a, chain)
    hidden = len(chain) - 1
    perms = [torch.arange(a[chain[l].weight].shape[0]) for l in range(hidden)]
    sweeps, converged = 0, hidden == 0
    while not converged and sweeps < max_iter:
        sweeps += 1
        changed = False
        for l in torch.randperm(hidden, generator=generator).tolist():
            cost = _cost(a, b, chain, perms, l).numpy()
            _, cols = linear_sum_assignment(cost, maximize=True)
            rows = np.arange(cost.shape[0])
            old, new = cost[rows, perms[l].numpy()].sum(), cost[rows, cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[l] = torch.as_tensor(cols, dtype=torch.long)
                changed = True
        converged = not changed
    moved = sum(int((p != torch.arange(p.numel())).sum()) for p in perms)
    return perms, {"sweeps": sweeps, "converged": converged, "changed_units": moved}
