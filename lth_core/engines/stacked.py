"""K training runs of one architecture as one stacked model: one ``Trainer.fit``, one optimiser.

``vectorize_trials: true`` trains the same run (round ``k``, ticket or control) of K trials
together (:mod:`lth_core.engines.lockstep` collects them). Each replicate keeps everything its
sequential run has:

- **parameters**: with ``vectorize_trials: true`` the replicates' own modules sit side by
  side (one ``nn.ModuleList``) and each runs its own forward on its own batch: the
  kernels, memory layout and arithmetic of its sequential run, so a stacked trial equals
  its sequential twin bit for bit. With ``vectorize_trials: batched`` (MLPs only: every
  parameter in an ``nn.Linear``) each parameter is one stacked ``(K, ...)`` tensor and the
  model's own ``forward`` runs once on the K batches folded into one, each ``nn.Linear``
  swapped for a :class:`StackedLinear` (one batched matrix product for K replicates):
  faster, but batched products round differently from K separate ones, and a long
  training run amplifies rounding (Adam's nearly sign-like steps on tiny gradients, then
  the usual divergence of trajectories), so the results agree only to what the numbers
  of two machines would. With ``vectorize_trials: parallel`` the parameters are the
  replicates' own, as with ``true``, and ``workers`` threads of one intra-op thread each
  train a share of the replicates side by side (:meth:`StackedModule._train_steps`): bit
  for bit the sequential run on one thread. Throughput, LeNet-300-100, K=4, two threads
  (``benchmarks/vectorised_trials.py``, the Speed page of the docs): batched and parallel
  1.2-1.8x sequential rounds depending on the VM's state, stacked 0.9-1.2x. Batched gains
  from one ``baddbmm`` per layer for K networks, which two threads split far better than
  one network's small products; parallel from running one-thread steps on both cores;
- **loss**: the sum of the replicates' mean losses, so replicate ``i``'s gradient is
  exactly the gradient of its own run (batched: one cross-entropy over the folded batch,
  averaged per replicate);
- **optimiser**: one fused optimiser over every replicate's tensors (parallel: one per
  worker, over its share). Adam, AdamW and SGD
  (momentum, Nesterov, weight decay) update every element from that element's gradient
  and state alone, so replicate ``i``'s state and step are those of a separate optimiser;
  one step for K networks (one Lightning step, one optimiser call, one mask enforcement
  instead of K), which saves little now that a sequential round trains 50 steps per call.
  Gradient clipping, which takes a norm over all tensors, is refused;
- **mask**: one :class:`lth_core.tickets.mask.MaskEnforcer` over every replicate's tensors and masks;
- **data**: replicate ``i``'s batches come from its own trial's loaders (its seed, order
  seed and validation split), stacked step by step; a split all replicates share (the test
  set) is passed once;
- **randomness**: dropout draws from the global RNG. Each replicate carries its own CPU
  RNG state, the one its trial left when it asked to train, and the state is swapped in
  around its forward: the same draws as the sequential run;
- **history**: one evaluation row list per replicate, as :class:`LotteryModule` keeps it;
- **checkpoints**: each replicate's, in its own run's folder and in that run's terms
  (:class:`lth_core.engines.checkpoints.ReplicaCheckpoints`: :meth:`StackedModule.replica_state`,
  :meth:`~StackedModule.replica_optimizer_state`, :meth:`~StackedModule.replica_rng`);
  a resumed fit starts from them (``optimizer_states``).

Models with buffers (batch norm's running statistics) are refused: stacked training does
not carry them (batched cannot fold batch statistics; per replicate they would need their
own bookkeeping and test).
"""

from __future__ import annotations

import copy
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lth_core.engines.checkpoints import ReplicaCheckpoints, ReplicaKeep
from lth_core.data.loaders import StepChunks, TensorLoader
from lth_core.errors import LthError, NonFiniteLoss
from lth_core.engines.enforcer import MaskEnforcer
from lth_core.private_apis import counted_step
from lth_core.engines.trainer import train_loader
from lth_core.tickets.mask import Mask
from lth_core.engines.module import EVAL_SPLITS, LotteryModule, build_optimizer, lr_factor

#: Every dropout layer torch has: their draws come from the global RNG.
DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
OFF = "set vectorize_trials: false to train the trials one after another"


class ReplicaDiverged(NonFiniteLoss):
    """Replicate ``replica``'s loss became NaN or infinite (the others were still finite).

    Inside a stacked fit ``replica`` is the replicate's index; :func:`train_stacked`
    re-raises it with the trial's number."""

    def __init__(self, replica: int, message: str):
        super().__init__(message)
        self.replica = replica


@dataclass
class Job:
    """One trial's request to train: what :func:`lth_core.lottery.train.train` built for its run."""

    trial: int
    run: Any  # lth_core.lottery.run.Run
    module: LotteryModule
    trainer: pl.Trainer
    start_step: int  # where training starts: the run's start, or the checkpoint it resumes
    keep: ReplicaKeep | None = None  # where the run's checkpoints go, and the optimiser state resumed
    rng: Tensor = field(default_factory=torch.get_rng_state)  # the trial's RNG when it asked
    error: BaseException | None = None  # raised in the trial's thread instead of returning


class StepGather:
    """The K trials' examples at given rows, gathered into one stacked batch ``(K, B, ...)``:
    each trial's inputs from its own tensor, augmented with its own draws for the step,
    normalised once the stack is whole (per trial when the trials' data sets normalise
    differently). Stacking the trials' own batches gives the same values element by element."""

    def __init__(self, loaders: list[TensorLoader]):
        self.loaders = loaders
        norms = {ld.normalization for ld in loaders}
        self.uniform = len(norms) == 1
        self.normalization = next(iter(norms)) if self.uniform else None

    def __call__(self, rows: Tensor, first_step: int, replicas: Sequence[int] | None = None) -> Tensor:
        """The inputs at ``rows`` (``(K, n)``: trial i's rows of its tensor), as consecutive
        steps' batches from ``first_step`` on (what augmentation draws by). With
        ``replicas``, only their slots are filled (a ``parallel`` worker's share)."""
        first = self.loaders[0]
        x = first.x.new_empty((len(self.loaders), rows.shape[1], *first.x.shape[1:]))
        for i in range(len(self.loaders)) if replicas is None else replicas:
            ld = self.loaders[i]
            torch.index_select(ld.x, 0, rows[i], out=x[i])
            if ld.augment is not None:  # each trial's crops and flips, drawn from its own seed and the step
                x[i] = ld.augment(x[i], ld.seed, first_step, ld.batch_size)
        if self.uniform:
            return x if self.normalization is None else self.normalization.apply(x, batch_dims=2)
        return torch.stack([ld.normalization.apply(x[i]) if ld.normalization else x[i] for i, ld in enumerate(self.loaders)])


class StackedLoader:
    """Iterates K loaders in step and stacks their batches: ``(K, B, ...)`` inputs.

    Unshuffled loaders over equal tensors (a test set every trial shares) yield their batch
    once, unstacked: a 1-D label tensor tells :class:`StackedModule` it is shared. Other
    batches are gathered straight into their slot of the stack (:class:`StepGather`), with
    no float32 batch per trial on top.

    ``deferred`` (training chunks): an item is ``(rows, y)``, each trial's rows of its tensor
    for the chunk's steps, and the module gathers one step at a time with :attr:`gather`
    (:meth:`StackedModule._steps`). A chunk of inputs (4 LeNet-300-100 trials x 50 steps of
    Fashion-MNIST: 16 MB as bytes, and Lightning holds the next one too) never exists; a
    step's batch is gathered from the same rows as the chunk's slice of it would be.
    """

    def __init__(self, loaders: list, deferred: bool = False):
        self.loaders = loaders
        if not all(isinstance(getattr(ld, "loader", ld), TensorLoader) for ld in loaders):
            raise LthError(f"vectorize_trials: the recipe's data set streams from torch Datasets, and stacked trials need its "
                           f"tensors in memory; {OFF}")
        if len({len(ld) for ld in loaders}) != 1:
            raise LthError(f"vectorize_trials: the trials' loaders differ in length ({[len(ld) for ld in loaders]}); {OFF}")
        first = loaders[0]
        self.shared = not any(ld.shuffle for ld in loaders) and all(ld.same_examples(first) for ld in loaders[1:])
        chunks = all(isinstance(ld, StepChunks) for ld in loaders)
        self.own = StepGather([ld.loader if chunks else ld for ld in loaders])
        #: What the module gathers each step's inputs with (``deferred`` training chunks), else None.
        self.gather = self.own if deferred and chunks and not self.shared else None

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.shared:
            yield from iter(self.loaders[0])
            return
        if all(isinstance(ld, StepChunks) for ld in self.loaders):
            first = self.loaders[0]
            plan = zip(range(first.start, first.end, first.chunk), zip(*(ld.indices() for ld in self.loaders)))
        else:  # evaluation: each trial's batch of its own split
            plan = ((items[0][0], [sel for _, sel in items]) for items in zip(*(ld.planned() for ld in self.loaders)))
        loaders = self.own.loaders
        for first_step, sels in plan:
            rows = torch.stack([ld.where(sel) for sel, ld in zip(sels, loaders)])
            y = torch.stack([ld.y[r] for r, ld in zip(rows, loaders)])
            yield (rows if self.gather is not None else self.own(rows, first_step)), y


class StackedLinear(nn.Module):
    """K ``nn.Linear`` layers, one per block of a folded batch ``(K*B, ..., in)``: one batched
    matrix product (``baddbmm``) instead of K, and gradients born stacked
    (``vectorize_trials: batched``).

    The weights are held transposed, ``(K, in, out)``, and the biases as ``(K, 1, out)``:
    ``h @ W^T + b`` is then one ``baddbmm`` whose output is already in the folded batch's
    layout and whose weight gradient is born in the weight's own layout, so neither forward
    nor backward copies (LeNet-300-100, K=4, two threads, the same process interleaved:
    1.25 ms per network-step against 1.35 holding ``(K, out, in)``). The optimiser and the
    mask work element by element, so the layout changes no result; :meth:`held` and
    :meth:`own` convert a stack of ``nn.Linear`` tensors to this layout and back.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(self.held("weight", weight))
        self.bias = nn.Parameter(self.held("bias", bias)) if bias is not None else None

    @staticmethod
    def held(leaf: str, stacked: Tensor) -> Tensor:
        """``(K, *shape)``: K replicates' ``nn.Linear.<leaf>`` (or its mask), as held here."""
        return (stacked.transpose(1, 2) if leaf == "weight" else stacked.unsqueeze(1)).contiguous()

    @staticmethod
    def own(leaf: str, held: Tensor) -> Tensor:
        """One replicate's slice of a held tensor in ``nn.Linear``'s own layout."""
        return held.t() if leaf == "weight" else held.squeeze(0)

    def forward(self, x: Tensor) -> Tensor:
        k, d_in = self.weight.shape[0], self.weight.shape[1]
        h = x.reshape(k, -1, d_in)
        out = torch.bmm(h, self.weight) if self.bias is None else torch.baddbmm(self.bias, h, self.weight)
        return out.reshape(*x.shape[:-1], -1)


def _leaf(name: str) -> str:
    return name.rpartition(".")[2]


def _batched_holder(models: list[nn.Module], input_shape: tuple | None) -> nn.Module | None:
    """For MLPs: the architecture with each ``nn.Linear`` made a :class:`StackedLinear`.

    The K replicates' batches are folded into one batch of K*B; every layer without
    parameters (ReLU, Flatten, ...) treats the samples independently, so the model's own
    ``forward`` runs all K at once. Only models whose parameters all live in ``nn.Linear``
    layers qualify, without dropout (its draws would not be the sequential runs'), and
    only if a probe batch gives each replicate the logits its own model gives: otherwise
    None (and ``vectorize_trials: batched`` is refused for this model).
    """
    model = models[0]
    own_params = [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    if input_shape is None or _has_dropout(model) or not all(isinstance(m, nn.Linear) for m in own_params):
        return None
    holder = copy.deepcopy(model)
    for name, module in list(holder.named_modules()):
        if isinstance(module, nn.Linear):
            weight = torch.stack([m.get_submodule(name).weight.detach() for m in models])
            bias = torch.stack([m.get_submodule(name).bias.detach() for m in models]) if module.bias is not None else None
            if not name:
                holder = StackedLinear(weight, bias)
                break
            owner, _, leaf = name.rpartition(".")
            setattr(holder.get_submodule(owner), leaf, StackedLinear(weight, bias))
    probe = torch.randn(len(models), 3, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            folded = holder(probe.flatten(0, 1)).reshape(len(models), 3, -1)
            each = torch.stack([m(probe[i]).reshape(3, -1) for i, m in enumerate(models)])
    except Exception:  # noqa: BLE001 - a forward that does not fold: use the per-replicate path
        return None
    return holder if folded.shape == each.shape and torch.allclose(folded, each, rtol=1e-4, atol=1e-5) else None


def _per_element(value: Any, param: Tensor) -> bool:
    """An optimiser state tensor kept per element of ``param`` (moments), not one scalar (step)."""
    return isinstance(value, Tensor) and value.shape == param.shape


def _has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, DROPOUT) and m.p > 0 for m in model.modules())


class StackedModule(LotteryModule):
    """Trains K replicates of one architecture as one module (see the module docstring).

    ``histories[i]`` receives replicate ``i``'s evaluation rows, the rows
    :class:`LotteryModule` writes to its ``history``; ``model`` holds every replicate's
    parameters and ``mask`` their masks, so the optimiser, mask enforcement and
    learning-rate schedule are :class:`LotteryModule`'s own. With ``input_shape`` an MLP
    takes the batched path (``batched`` says whether it did).
    """

    def __init__(self, models: list[nn.Module], masks: list[Mask], optimizer: dict, num_classes: int,
                 step_offset: int = 0, rng: list[Tensor] | None = None, input_shape: tuple | None = None,
                 workers: int = 1, optimizer_states: list[dict | None] | None = None,
                 histories: list[list[dict]] | None = None):
        batched = _batched_holder(models, input_shape)
        if batched is not None:
            holder = batched
            mask = Mask({n: StackedLinear.held(_leaf(n), torch.stack([m[n] for m in masks])) for n in masks[0]})
        else:  # the replicates' own modules side by side: parameters "<i>.<name>"
            holder, mask = nn.ModuleList(models), Mask({f"{i}.{n}": t for i, m in enumerate(masks) for n, t in m.items()})
        super().__init__(holder, mask, optimizer, num_classes, step_offset=step_offset)
        #: MLPs run as one folded batch through StackedLinear layers (stacked parameters);
        #: other models run each replicate's own module in turn (its own parameters).
        self.batched = batched is not None
        self.k = len(models)
        self.densities = [m.density() for m in masks]
        #: Each replicate's evaluation rows; resumed, its run's rows up to the checkpoint.
        self.histories: list[list[dict]] = [list(h) for h in histories] if histories is not None else [[] for _ in models]
        # Per replicate and split, the metrics LotteryModule keeps per split: same numbers.
        self.replica_acc = nn.ModuleList([MulticlassAccuracy(num_classes, average="micro") for _ in range(2 * self.k)])
        self.replica_loss = nn.ModuleList([MeanMetric() for _ in range(2 * self.k)])
        self.rng = list(rng) if rng is not None and _has_dropout(models[0]) else None
        #: ``vectorize_trials: parallel``: the replicates' training steps run on ``workers``
        #: threads of one intra-op thread each, one per replicate at most: a lone replicate
        #: too, so that its steps are the one-thread run's whatever it trains beside. Dropout's
        #: draws come from the one global RNG, so a model with dropout trains its replicates
        #: in turn (``parallel`` False, ``workers`` 1).
        self.parallel = workers > 1 and not self.batched and self.rng is None
        self.workers = min(workers, self.k) if self.parallel else 1
        self._pool: ThreadPoolExecutor | None = None
        #: The replicates' own models (a plain list: batched holds copies of their parameters).
        self.own_models = list(models)
        #: Resumed: each replicate's optimiser ``state_dict`` from its run's checkpoint (or None).
        self.optimizer_states = list(optimizer_states) if optimizer_states is not None else [None] * self.k
        self._opt: torch.optim.Optimizer | None = None
        #: Set when training chunks arrive as rows (a deferred :class:`StackedLoader`): each step's inputs are gathered with it.
        self.gather: StepGather | None = None

    def replica_state(self, i: int) -> dict[str, Tensor]:
        """Replicate ``i``'s parameters by the model's own names."""
        if self.batched:
            return {n: StackedLinear.own(_leaf(n), p[i].detach()) for n, p in self.model.named_parameters()}
        return {n: p.detach() for n, p in self.model[i].named_parameters()}

    def configure_optimizers(self):
        out = super().configure_optimizers()
        self._opt = out["optimizer"] if isinstance(out, dict) else out
        if self.parallel:  # each worker's replicates: their own optimiser and mask, stepped on its thread
            self.shares = [list(range(w, self.k, self.workers)) for w in range(self.workers)]
            self.share_opts, self.share_enforcers = [], []
            for share in self.shares:
                mine = {str(i) for i in share}  # parameters and masks here are named "<i>.<name>"
                self.share_opts.append(build_optimizer([p for i in share for p in self.model[i].parameters()], self.optimizer_cfg))
                self.share_enforcers.append(MaskEnforcer(self.model, Mask({n: t for n, t in self.mask.items() if n.split(".")[0] in mine})))
        self._load_optimizer_states()
        return out

    # --- each replicate's optimiser state, in its own run's terms (checkpoints) ----------
    def _replica_slots(self, i: int) -> list[tuple[torch.optim.Optimizer, Tensor, str | None]]:
        """Where replicate ``i``'s optimiser state lives, per parameter of its own model in
        that model's order: (optimiser, parameter it is kept for, leaf). ``leaf`` (batched)
        names the stacked tensor whose slice ``i`` is the replicate's; None: its own tensor."""
        if self.batched:
            return [(self._opt, p, _leaf(n)) for n, p in self.model.named_parameters()]
        opt = self.share_opts[i % self.workers] if self.parallel else self._opt
        return [(opt, p, None) for p in self.model[i].parameters()]

    def _own_optimizer(self, i: int) -> torch.optim.Optimizer:
        """An optimiser over replicate ``i``'s own model as its run alone builds it, with the
        learning rate the schedule gives the current step."""
        opt = build_optimizer(self.own_models[i].parameters(), self.optimizer_cfg)
        factor = lr_factor(self.optimizer_cfg)
        if factor is not None:
            step = self.step
            torch.optim.lr_scheduler.LambdaLR(opt, lambda s: factor(s + step))
        return opt

    def replica_optimizer_state(self, i: int) -> dict:
        """Replicate ``i``'s optimiser ``state_dict`` as its run trained alone holds it now."""
        opt = self._own_optimizer(i)
        for p, (held_opt, held, leaf) in zip(self.own_models[i].parameters(), self._replica_slots(i)):
            state = held_opt.state.get(held)
            if state:
                opt.state[p] = {key: StackedLinear.own(leaf, v[i]) if leaf and _per_element(v, held) else v
                                for key, v in state.items()}
        return opt.state_dict()

    def _load_optimizer_states(self) -> None:
        """Resumed: every replicate's optimiser state from its run's checkpoint."""
        if not any(s is not None for s in self.optimizer_states):
            return
        if not all(s is not None for s in self.optimizer_states):  # _group_key keeps them apart
            raise RuntimeError("a stacked fit resumes every replicate or none")
        own_states = []
        for i, saved in enumerate(self.optimizer_states):
            opt = self._own_optimizer(i)
            opt.load_state_dict(saved)  # the run's own format, checked and cast by torch
            own_states.append([opt.state.get(p, {}) for p in self.own_models[i].parameters()])
        if not self.batched:  # the replicates' own tensors
            for i in range(self.k):
                for (opt, held, _), state in zip(self._replica_slots(i), own_states[i]):
                    if state:
                        opt.state[held] = dict(state)
            return
        own = list(self.own_models[0].parameters())
        for j, (opt, held, leaf) in enumerate(self._replica_slots(0)):  # the K states stacked into the held layout
            if own_states[0][j]:
                opt.state[held] = {key: StackedLinear.held(leaf, torch.stack([s[j][key] for s in own_states]))
                                   if _per_element(v, own[j]) else v.clone() for key, v in own_states[0][j].items()}

    def replica_rng(self, i: int, handed: Tensor) -> Tensor:
        """Replicate ``i``'s torch generator now: its own stream (dropout), else ``handed``."""
        return self.rng[i] if self.rng is not None else handed

    # --- vectorize_trials: parallel ---------------------------------------------------
    def _train_steps(self, batch) -> None:
        """With workers (``vectorize_trials: parallel``): each worker thread, with one
        intra-op thread, trains its share of the replicates through every step of this
        chunk (:meth:`_share_steps`) while the others train theirs; the learning rate of
        each step is the one the schedule gives it. Lightning's step count then advances
        by the chunk."""
        if not self.parallel:
            return super()._train_steps(batch)
        x, y = batch
        steps, first = x.shape[1] // self.batch_size, self.step
        factor = lr_factor(self.optimizer_cfg)  # LambdaLR's rate at each step, as the sequential run computes it
        lrs = None if factor is None else [self.optimizer_cfg["lr"] * factor(first + j) for j in range(steps)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="lth-replica", initializer=torch.set_num_threads, initargs=(1,))
        futures = [self._pool.submit(self._share_steps, w, x, y, lrs) for w in range(self.workers)]
        losses = torch.empty(steps, self.k)
        for share, future in zip(self.shares, futures):
            losses[:, share] = future.result()
        lightning_opt = self.optimizers()
        for _ in range(steps):  # Lightning's step count (global_step, max_steps); its own optimiser never steps
            with counted_step(lightning_opt):
                pass
        self._check_losses(losses, first)
        self._log_train_loss(losses.mean(), self.step)

    def _share_steps(self, w: int, x: Tensor, y: Tensor, lrs: list[float] | None) -> Tensor:
        """Every step of this chunk for worker ``w``'s replicates, on its thread: the
        ``vectorize_trials: true`` step over those replicates (their own forwards, one
        backward of the summed losses, their own optimiser). Returns (steps, replicates)."""
        share, opt, enforcer = self.shares[w], self.share_opts[w], self.share_enforcers[w]
        out = []
        for j, (xb, yb) in enumerate(self._steps((x, y), share)):
            losses = self._step_losses(xb, yb, share)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            enforcer.mask_grads()
            if lrs is not None:
                for group in opt.param_groups:
                    group["lr"] = lrs[j]
            opt.step()
            out.append(losses.detach())
        return torch.stack(out)

    def on_fit_end(self) -> None:
        super().on_fit_end()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _logits(self, i: int, x: Tensor) -> Tensor:
        if self.rng is None or not self.training:
            return self.model[i](x)
        saved = torch.get_rng_state()
        torch.set_rng_state(self.rng[i])  # replicate i's own stream of dropout draws
        try:
            return self.model[i](x)
        finally:
            self.rng[i] = torch.get_rng_state()
            torch.set_rng_state(saved)

    def forward(self, x: Tensor, shared: bool = False) -> Tensor:
        """Every replicate's logits, ``(K, B, classes)``, for stacked inputs ``(K, B, ...)``
        (or one batch ``(B, ...)`` all replicates see, with ``shared``)."""
        if self.batched:
            xs = x.expand(self.k, *x.shape) if shared else x
            return self.model(xs.flatten(0, 1)).reshape(self.k, xs.shape[1], -1)
        return torch.stack([self._logits(i, x if shared else x[i]) for i in range(self.k)])

    def training_step(self, batch, batch_idx):
        if not self.automatic_optimization:  # several steps per call: LotteryModule's loop, these hooks
            return self._train_steps(batch)
        losses = self._step_losses(*batch)
        if losses.device.type == "cpu":
            self._check_losses(losses.detach().unsqueeze(0), self.step)
        if self._log_now():
            self._log_train_loss(losses.detach().mean(), self.step + 1)
        return losses.sum()

    def _steps(self, batch, replicas: Sequence[int] | None = None):
        """The steps of a multi-step stacked batch ``(K, steps * B, ...)``: ``(K, B, ...)`` each.
        A deferred chunk holds rows: each step's inputs are gathered here, one step at a time
        (:attr:`gather`). Every step's inputs reach the kernels as a fresh contiguous tensor
        either way (``x[i].clone()``, or the folding ``reshape`` of the batched path), so the
        results are the same. ``replicas``: only theirs are needed (a ``parallel`` worker)."""
        x, y = batch
        steps = zip(x.split(self.batch_size, dim=1), y.split(self.batch_size, dim=1))
        if self.gather is None:
            return steps
        first = self.step
        return ((self.gather(rows, first + s, replicas), yb) for s, (rows, yb) in enumerate(steps))

    def _step_losses(self, x: Tensor, y: Tensor, replicas: Sequence[int] | None = None) -> Tensor:
        """Each replicate's own loss on its own batch, ``(K,)`` (or of ``replicas`` only)."""
        if self.batched:  # one cross-entropy over the folded batch; each replicate's mean of its own
            logits = self(x)
            k, b = logits.shape[:2]
            return F.cross_entropy(logits.reshape(k * b, -1), y.reshape(k * b), reduction="none").view(k, b).mean(1)
        # a fresh (aligned) copy of each batch: the kernels then take the sequential run's path
        replicas = range(self.k) if replicas is None else replicas
        return torch.stack([F.cross_entropy(self._logits(i, x[i].clone()), y[i]) for i in replicas])

    def _check_losses(self, losses: Tensor, first: int) -> None:
        """``losses`` is (steps, K): the first non-finite one names its replicate and step."""
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            step, replica = (int(v) for v in (~finite).nonzero()[0])
            raise ReplicaDiverged(replica, f"the training loss is {float(losses[step, replica])} at step {first + step}")

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        shared = y.dim() == 1
        logits = self(x, shared=shared)
        for i in range(self.k):
            yi = y if shared else y[i]
            slot = dataloader_idx * self.k + i
            self.replica_loss[slot].update(F.cross_entropy(logits[i], yi, reduction="mean"), weight=yi.shape[0])
            self.replica_acc[slot].update(logits[i], yi)

    def on_validation_epoch_end(self) -> None:
        for i in range(self.k):
            row = {"step": self.step, "weights_remaining": self.densities[i]}
            for s, split in enumerate(EVAL_SPLITS):
                slot = s * self.k + i
                row[f"{split}_loss"] = float(self.replica_loss[slot].compute())
                row[f"{split}_acc"] = float(self.replica_acc[slot].compute())
                self.replica_loss[slot].reset()
                self.replica_acc[slot].reset()
            history = self.histories[i]
            if history and history[-1]["step"] == row["step"]:
                history[-1] = row  # a repeated evaluation at the same step (final check)
            else:
                history.append(row)
        for i, history in enumerate(self.histories):  # after every replicate has its row
            if not math.isfinite(history[-1]["val_loss"]):
                raise ReplicaDiverged(i, f"the validation loss is {history[-1]['val_loss']} at step {self.step}")


def check_stackable(job: Job, mode: str = "stacked") -> None:
    """Refuse, in one line, a run the stacked model cannot train as its sequential run."""
    model, trainer = job.module.model, job.trainer
    buffers = [n for n, _ in model.named_buffers()]
    if buffers:
        raise LthError(f"vectorize_trials: the model has buffers ({', '.join(buffers[:3])}{', ...' if len(buffers) > 3 else ''}: "
                       f"batch norm's running statistics), which stacked training does not carry; {OFF}")
    own = (pl.callbacks.ProgressBar, pl.callbacks.ModelSummary)
    foreign = [cb for cb in trainer.callbacks if not isinstance(cb, own) and not getattr(cb, "stack_safe", False)]  # lth's progress line only reads
    if foreign:
        cb = foreign[0]
        raise LthError(f"vectorize_trials: callback {type(cb).__name__} (from {type(cb).__module__.split('.')[0]}) "
                       f"works on one unstacked model; {OFF}")
    if trainer.gradient_clip_val:
        raise LthError(f"vectorize_trials: trainer.gradient_clip_val clips by a norm over all of a network's gradients; {OFF}")
    if _has_dropout(model) and trainer.strategy.root_device.type != "cpu":
        raise LthError(f"vectorize_trials: dropout on {trainer.strategy.root_device.type} is not replayed per trial (CPU only); {OFF}")
    if mode == "parallel" and trainer.strategy.root_device.type != "cpu":
        raise LthError(f"vectorize_trials: parallel shares the trials out over CPU threads, and this run trains on "
                       f"{trainer.strategy.root_device.type}; use vectorize_trials: true")
    if mode == "parallel" and str(trainer.precision) not in ("32-true", "32"):
        raise LthError(f"vectorize_trials: parallel trains in 32-bit precision only (worker threads do not carry "
                       f"Lightning's autocast), and trainer.precision is {trainer.precision!r}; use vectorize_trials: true")


def _group_key(job: Job) -> str:
    """Jobs that can share one stacked fit: same start step (resumed from a checkpoint or
    not: a kill between two replicates' checkpoint files leaves them at different steps),
    optimiser and data shapes."""
    d = job.run.data
    resumed = job.keep is not None and job.keep.optimizer_state is not None
    shapes = [[d.examples(split), *d.input_shape] for split in ("train", "val", "test")]
    return json.dumps([job.start_step, resumed, job.module.steps_per_call, job.module.optimizer_cfg, *shapes,
                       d.batch_size, d.eval_batch_size], sort_keys=True, default=str)


def train_stacked(jobs: list[Job], mode: str = "stacked") -> None:
    """Train every job, stacking those that fit together; results go back into each job.

    ``mode`` is ``"stacked"`` (``vectorize_trials: true``), ``"batched"`` (an MLP's
    replicates through batched matrix products; any other model is refused) or
    ``"parallel"`` (each replicate's steps on one of ``torch.get_num_threads()`` worker
    threads, one intra-op thread each).

    Each job's ``module`` gets its replicate's ``history`` and its model the trained
    weights, as if ``trainer.fit`` had trained it alone. A replicate whose loss diverged
    raises :class:`ReplicaDiverged` (its history up to then is in its module).
    """
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        check_stackable(job, mode)
        groups.setdefault(_group_key(job), []).append(job)
    for group in groups.values():
        _fit_group(group, mode)


def _fit_group(jobs: list[Job], mode: str = "stacked") -> None:
    first, batched = jobs[0], mode == "batched"
    stacked = StackedModule([j.module.model for j in jobs], [j.module.mask for j in jobs], first.module.optimizer_cfg,
                            first.run.data.num_classes, step_offset=first.start_step, rng=[j.rng for j in jobs],
                            input_shape=first.run.data.input_shape if batched else None,
                            workers=torch.get_num_threads() if mode == "parallel" else 1,
                            optimizer_states=[j.keep.optimizer_state if j.keep else None for j in jobs],
                            histories=[j.module.history for j in jobs])
    if batched and not stacked.batched:
        raise LthError("vectorize_trials: batched runs MLPs only (every parameter in an nn.Linear, no dropout, a forward "
                       f"that treats samples independently), not model {first.run.recipe['model']['name']!r}; "
                       "use vectorize_trials: true")
    chunk = first.module.steps_per_call  # train chose it for this run; every job's trainer counts calls so
    stacked.train_in_chunks(chunk, first.run.data.batch_size)
    max_steps = first.run.recipe["trainer"]["max_steps"]
    for job in jobs:  # on a GPU the data stays there when it fits (the trials share one copy)
        job.run.data.place(first.trainer.strategy.root_device)
    train = StackedLoader([train_loader(j.run.data, j.start_step, max_steps, chunk) for j in jobs], deferred=True)
    stacked.gather = train.gather  # each step's inputs gathered from the chunk's rows
    # A stacked evaluation batch holds about data.eval_batch_size examples, as one trial's does (not K times
    # as many: four LeNet-300-100 trials on Fashion-MNIST peaked 30 MB higher); only the order of the sums changes.
    per_trial = -(-first.run.data.eval_batch_size // len(jobs))
    evals = [StackedLoader(list(split)) for split in zip(*(j.run.data.eval_loaders(per_trial) for j in jobs))]
    trainer = first.trainer  # made by engines.trainer.make_trainer from the recipe, as every job's is
    keeper = ReplicaCheckpoints([j.keep for j in jobs]) if all(j.keep is not None for j in jobs) else None
    if keeper is not None:
        trainer.callbacks.insert(0, keeper)  # each replicate's checkpoints in its own run's folder
    try:
        trainer.fit(stacked, train_dataloaders=train, val_dataloaders=evals)
        if keeper is not None:
            trainer.callbacks.remove(keeper)
        if not stacked.histories[0] or stacked.histories[0][-1]["step"] != stacked.step:
            trainer.validate(stacked, dataloaders=evals, verbose=False)
    except ReplicaDiverged as exc:
        jobs[exc.replica].module.history = stacked.histories[exc.replica]
        raise ReplicaDiverged(jobs[exc.replica].trial, str(exc)) from None
    stacked.cpu()
    for i, job in enumerate(jobs):
        if stacked.batched:  # otherwise the replicate trained the trial's own model in place
            with torch.no_grad():
                for name, value in stacked.replica_state(i).items():
                    job.module.model.get_parameter(name).copy_(value)
        job.module.history = stacked.histories[i]
        # The replicate's module never ran under a Trainer (its global step is 0): the
        # lottery reads ``module.step`` as where training ended.
        job.module.step_offset = stacked.step
        if stacked.rng is not None:
            job.rng = stacked.rng[i]
