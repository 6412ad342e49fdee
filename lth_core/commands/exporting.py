"""``lth export``: a ticket as a small model that runs without lth.

A sparse ticket often leaves whole hidden units (or conv channels) with nothing to do:
every weight into them pruned (their output is a constant) or every weight out of them
pruned (nobody reads them). :func:`compact` removes such units exactly:

- a unit nobody reads is dropped with its row of weights and its bias;
- a unit whose inputs are all pruned outputs the constant act(bias); when the next layer
  is fully connected (or a conv read through ``Flatten`` by a Linear) that constant is
  folded into the next layer's bias and the unit dropped. In front of a convolution the
  constant map meets zero padding at the borders, so it is kept unless act(bias) = 0.

It repeats until nothing changes (dropping units can orphan units of the layer before).
Output classes and input features are never removed. The result is a plain
``nn.Sequential`` saved with ``torch.export`` (``torch.export.load(FILE).module()`` runs it
with only torch installed) plus ``FILE.json``: parameter counts (dense, nonzero, compact),
units kept per layer, file sizes, CPU latency against the dense model, and how far the
compact model's logits are from the masked model's on the test set.

Models must be a chain of Linear / Conv2d / ReLU / MaxPool2d / AvgPool2d / Flatten /
Dropout / Identity (``lenet300``, ``mlp``, ``conv2``/``conv4``/``conv6`` without batch norm);
anything else is refused with the list of supported layers.
"""

from __future__ import annotations

import io
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lth_core.version import __version__
from lth_core.errors import LthError
from lth_core.files import atomic_write_bytes, atomic_write_text, make_dir
from lth_core.tickets.mask import apply_mask

PARAMETRIC = (nn.Linear, nn.Conv2d)
PASSIVE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)


def chain(model: nn.Module) -> list[nn.Module]:
    """The model as an ordered list of leaf layers, if it is a plain chain of supported ones."""
    root = model
    while not isinstance(root, nn.Sequential):
        children = list(root.children())
        if len(children) != 1:
            raise LthError(_unsupported(type(model).__name__))
        root = children[0]
    layers = []
    for m in root:
        if isinstance(m, nn.Sequential):
            layers.extend(chain(m))
        elif isinstance(m, PARAMETRIC + PASSIVE):
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise LthError(_unsupported("grouped Conv2d"))
            layers.append(m)
        else:
            raise LthError(_unsupported(type(m).__name__))
    return layers


def _unsupported(what: str) -> str:
    names = ", ".join(t.__name__ for t in PARAMETRIC + PASSIVE)
    return f"lth export compacts plain chains of {names} (lenet300, mlp, conv2/4/6 without batch norm); found {what}"


def _resize(layer: nn.Module, keep_out: Tensor | None = None, keep_in: Tensor | None = None) -> nn.Module:
    """A copy of a Linear/Conv2d (always with a bias) keeping the given output rows and input
    columns (all by default); any other layer is returned as it is."""
    if not isinstance(layer, PARAMETRIC):
        return layer
    w = layer.weight.detach()
    b = layer.bias.detach() if layer.bias is not None else w.new_zeros(w.shape[0])
    if keep_out is not None:
        w, b = w[keep_out], b[keep_out]
    if keep_in is not None:
        w = w[:, keep_in]
    if isinstance(layer, nn.Linear):
        new = nn.Linear(w.shape[1], w.shape[0])
    else:
        new = nn.Conv2d(w.shape[1], w.shape[0], layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                        padding_mode=layer.padding_mode)
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(b)
    return new


def _links(layers: list[nn.Module]) -> list[tuple[int, int, list[nn.Module]]]:
    """(producer index, consumer index, passive layers between) for consecutive parametric layers."""
    idx = [i for i, m in enumerate(layers) if isinstance(m, PARAMETRIC)]
    return [(a, b, layers[a + 1:b]) for a, b in zip(idx, idx[1:])]


def _columns(producer: nn.Module, consumer: nn.Module, between: list[nn.Module]) -> int:
    """How many consumer input columns each producer unit feeds (H*W when a Flatten sits between)."""
    units = producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels
    fan = consumer.in_features if isinstance(consumer, nn.Linear) else consumer.in_channels
    if fan % units:
        raise LthError(_unsupported(f"a {type(consumer).__name__} whose inputs do not map onto the previous layer's units"))
    return fan // units


def _constant(producer: nn.Module, between: list[nn.Module], unit: int) -> float:
    """act(bias) of a unit with no inputs: what it outputs whatever the input."""
    value = producer.bias.detach()[unit]
    for m in between:
        if isinstance(m, nn.ReLU):
            value = value.clamp_min(0)
    return float(value)


def _step(layers: list[nn.Module]) -> bool:
    """Remove every unit that one link shows is dead; True if anything changed."""
    for a, b, between in _links(layers):
        producer, consumer = layers[a], layers[b]
        per = _columns(producer, consumer, between)
        units = producer.weight.shape[0]
        w_out = consumer.weight.detach()
        reads = w_out.reshape(w_out.shape[0], units, per, *w_out.shape[2:]) if isinstance(consumer, nn.Linear) \
            else w_out.reshape(w_out.shape[0], units, -1)
        read = reads.transpose(0, 1).reshape(units, -1).ne(0).any(1)
        fed = producer.weight.detach().reshape(units, -1).ne(0).any(1)
        foldable = isinstance(consumer, nn.Linear)
        drop = ~read
        consts = {}
        for j in torch.nonzero(read & ~fed).flatten().tolist():
            c = _constant(producer, between, j)
            if foldable or c == 0.0:
                drop[j] = True
                consts[j] = c
        if not drop.any() or bool(drop.all()):
            continue  # an all-dead layer is left alone: the network is then a constant anyway
        keep_units = torch.nonzero(~drop).flatten()
        new_consumer = _resize(consumer)
        with torch.no_grad():
            for j, c in consts.items():
                if c:
                    cols = w_out.reshape(w_out.shape[0], units, per)[:, j, :]
                    new_consumer.bias += cols.sum(1) * c
        keep_cols = (keep_units[:, None] * per + torch.arange(per)[None, :]).flatten() if isinstance(consumer, nn.Linear) else keep_units
        layers[a] = _resize(producer, keep_out=keep_units)
        layers[b] = _resize(new_consumer, keep_in=keep_cols)
        return True
    return False


class SparseLinear(nn.Module):
    """A Linear layer stored as its nonzero weights only: values + int32 flat positions.

    8 bytes per kept weight instead of 4 per weight. Each call scatters them into a dense
    matrix and multiplies: one small scatter, then the same BLAS call as a dense layer
    (computing straight from the nonzeros, an index_add over them, measured 6x slower
    on this CPU). Plain torch ops, so it exports.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        self.out_features, self.in_features = w.shape
        flat = torch.nonzero(w.flatten()).flatten()
        self.register_buffer("positions", flat.to(torch.int32))
        self.values = nn.Parameter(w.flatten()[flat].clone())
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def weight_matrix(self) -> Tensor:
        dense = self.values.new_zeros(self.out_features * self.in_features)
        return dense.index_put((self.positions.long(),), self.values).view(self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.linear(x, self.weight_matrix(), self.bias)


def sparsify(model: nn.Sequential, max_density: float) -> nn.Sequential:
    """Swap every Linear whose weight density is at most ``max_density`` for a SparseLinear."""
    layers = [
        SparseLinear(m) if isinstance(m, nn.Linear) and float((m.weight != 0).float().mean()) <= max_density else m
        for m in model
    ]
    return nn.Sequential(*layers).eval()


def compact(model: nn.Module) -> nn.Sequential:
    """An exact, smaller copy of a masked chain model with dead units removed (see module doc)."""
    layers = [_resize(m) for m in chain(model)]
    while _step(layers):
        pass
    return nn.Sequential(*layers).eval()


def count(model: nn.Module, nonzero: bool = False) -> int:
    return int(sum((p != 0).sum() if nonzero else p.numel() for p in model.parameters()))


def latency_ms(model: nn.Module, x: Tensor, repeats: int = 30) -> float:
    """Median wall time of one forward pass (ms), after a warm-up, in this process."""
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _exported(model: nn.Module, example: Tensor) -> bytes:
    """The ``torch.export`` archive of ``model`` with a dynamic batch size, in memory.

    Serialised to bytes, then written by :func:`lth_core.files.atomic_write_bytes`: torch's
    archive writer reports a full disk as a bare RuntimeError ("file write failed"), while a
    plain write names the file and the cause.
    """
    batch = torch.export.Dim("batch", min=1)
    example = example.clone()  # a view would store its whole base tensor as the sample input
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def check_out_file(out: Path, force: bool) -> None:
    """``lth export`` never replaces an earlier export (``FILE`` or ``FILE.json``) unless
    ``--force`` says so; a folder at ``FILE`` is refused either way."""
    if out.is_dir():
        raise LthError(f"--out {out} is a folder; give a file name such as {out / 'model.pt2'}")
    existing = [p for p in (out, _record_path(out)) if p.exists()]
    if existing and not force:
        raise LthError(f"--out {out}: {' and '.join(str(p) for p in existing)} already exist{'s' if len(existing) == 1 else ''}; "
                       "choose another --out, or add --force to replace them")


def _record_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def export_ticket(ticket_dir: str | Path, out: str | Path, recipe: str | None = None, pm=None,
                  sparse_below: float = 0.3, force: bool = False) -> dict:
    """Write the compact model to ``out`` (torch.export) and its measurements to ``out.json``.

    Fully connected layers left with at most ``sparse_below`` of their weights are stored
    as :class:`SparseLinear` (0 keeps every layer dense; 1 makes every Linear sparse).
    An existing ``out`` or ``out.json`` is refused unless ``force``.
    """
    if not 0.0 <= sparse_below <= 1.0:
        raise LthError(f"--sparse-below must be in [0, 1] (a layer density), got {sparse_below}")
    from lth_core.lottery.run import build_model

    ticket_dir, out = Path(ticket_dir), Path(out)
    check_out_file(out, force)
    rec, registry, data, model, ticket = _ticket_model(ticket_dir, recipe, pm)
    small = sparsify(compact(model), sparse_below)
    make_dir(out.parent)
    atomic_write_bytes(out, _exported(small, data.inputs("test", slice(0, 2))))
    dense, dense_size = _dense_baseline(build_model(rec, registry, data, rec["seed"]).eval(), data.inputs("test", slice(0, 2)))
    record = {"ticket": str(ticket_dir), "file": str(out), "weights_remaining": ticket.mask.density(), "sparse_below": sparse_below,
              "dense_units": [int(m.weight.shape[0]) for m in chain(model) if isinstance(m, PARAMETRIC)],
              "file_bytes": {"compact": out.stat().st_size, "dense": dense_size},
              **_measure(model, small, torch.export.load(str(out)).module(), dense, data),
              "torch": torch.__version__, "lth_version": __version__}
    atomic_write_text(_record_path(out), json.dumps(record, indent=2))
    return record


def _ticket_model(ticket_dir: Path, recipe: str | None, pm: Any) -> tuple:
    """The ticket's recipe, registry, data and its trained, masked model in eval mode;
    a ticket of another architecture or one without trained weights is refused."""
    from lth_core.commands.merging import find_recipe
    from lth_core.config import load_recipe
    from lth_core.plugin_api.options import check_against_plugins
    from lth_core.lottery.run import build_model, load_data
    from lth_core.plugin_api.registry import get_registry
    from lth_core.tickets.ticket import load_ticket, require_ticket

    require_ticket(ticket_dir)
    registry = get_registry(pm)
    rec = load_recipe(recipe or find_recipe(ticket_dir))
    check_against_plugins(rec, registry)
    data = load_data(rec, registry)
    model = build_model(rec, registry, data, rec["seed"])
    ticket = load_ticket(ticket_dir)
    try:  # another architecture (a --recipe of another model, or tensors swapped in the ticket)
        ticket.check_fits(model, source=f"ticket {ticket_dir}")
    except LthError as exc:
        raise LthError(f"{exc} (the model of {rec.source}: {rec['model']})") from None
    if ticket.final is None:
        raise LthError(f"ticket {ticket_dir} has no trained weights (final.safetensors) to export")
    chain(model)  # refuse unsupported architectures before any work
    model.load_state_dict(ticket.final)
    apply_mask(model, ticket.mask)
    return rec, registry, data, model.eval(), ticket


def _dense_baseline(model: nn.Module, example: Tensor) -> tuple[nn.Module, int]:
    """The same model, dense and exported the same way (the baseline for size and latency):
    the reloaded program and its archive's size (never written to disk)."""
    archive = _exported(model, example)
    return torch.export.load(io.BytesIO(archive)).module(), len(archive)


def _measure(model: nn.Module, small: nn.Module, loaded: nn.Module, dense: nn.Module, data: Any) -> dict:
    """Parameter counts, units kept, and how the compact model (as built and as reloaded from
    its file) agrees with the masked model on the test set, and CPU latencies against dense."""
    x_test, y_test = data.test_x, data.test_y
    with torch.no_grad():
        want, got, reloaded = model(x_test), small(x_test), loaded(x_test)
    return {
        "parameters": {"dense": count(model), "nonzero_in_ticket": count(model, nonzero=True), "compact": count(small), "compact_nonzero": count(small, nonzero=True)},
        "units": [
            {"layer": i, "type": type(m).__name__, "units": int(m.out_features if isinstance(m, SparseLinear) else m.weight.shape[0])}
            for i, m in enumerate(small) if isinstance(m, PARAMETRIC + (SparseLinear,))
        ],
        "latency_ms": {
            f"batch_{n}": {"dense": latency_ms(dense, x_test[:n]), "compact": latency_ms(loaded, x_test[:n])}
            for n in (1, 256)
        },
        "max_abs_logit_diff": float((got - want).abs().max()),
        "max_abs_logit_diff_reloaded": float((reloaded - want).abs().max()),
        "prediction_agreement": float((reloaded.argmax(1) == want.argmax(1)).float().mean()),
        "test_acc": float((reloaded.argmax(1) == y_test).float().mean()),
    }


def format_export(record: dict) -> str:
    p, lat = record["parameters"], record["latency_ms"]
    lines = [
        f"{record['file']}: {p['compact']:,} stored weights and biases (dense {p['dense']:,}, nonzero in the ticket {p['nonzero_in_ticket']:,})",
        f"units per layer: {[u['units'] for u in record['units']]} (dense {record['dense_units']})",
        f"file {record['file_bytes']['compact']:,} bytes (dense {record['file_bytes']['dense']:,})",
        *(f"CPU latency {k}: {v['compact']:.3f} ms (dense {v['dense']:.3f} ms)" for k, v in lat.items()),
        f"max |logit - masked model's| = {record['max_abs_logit_diff_reloaded']:.2e}; "
        f"same prediction on {record['prediction_agreement']:.2%} of the test set; test acc {record['test_acc']:.4f}",
    ]
    return "\n".join(lines)
