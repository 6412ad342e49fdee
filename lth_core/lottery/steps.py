"""Between two training runs: prune (a criterion, by the allocation), rewind, controls.

``lottery.mode: iterative`` prunes round k-1's ticket; ``one_shot`` prunes round 0's
trained network straight to what k iterative rounds reach; ``at_init`` does the same from
θ0 before any training. Controls (random reinitialisation, random pruning, ...) train a
variant of each sparse round's ticket and never feed the next round.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from lth_core.errors import LthError, PluginError
from lth_core.config import Recipe
from lth_core.lottery.run import Run, Start
from lth_core.lottery.summary import progress_line
from lth_core.lottery.train import derived_seed, train, trained_weights
from lth_core.plugin_api import contracts
from lth_core.plugin_api.contexts import PruneContext, RewindContext
from lth_core.plugin_api.criteria import prune_with, scores_of
from lth_core.plugin_api.registry import call_plugin
from lth_core.seeds import seeded_generator
from lth_core.tickets.limits import rounds_limit
from lth_core.tickets.mask import Mask
from lth_core.tickets.pruning import Allocation, match_density
from lth_core.tickets.ticket import load_ticket


@dataclass
class Level:
    """What a finished round leaves behind: its mask, trained weights and callback state.

    The trained weights stay in the round's ticket folder (``folder``) and are read when a
    later step needs them, so a round in training holds no earlier round's weights in
    memory: only the model, its gradients and optimiser state, θ0 and the masks.
    ``weights`` holds weights that are not in any folder (θ0 for ``mode: at_init``).
    """

    mask: Mask
    folder: Path | None = None
    state: dict = field(default_factory=dict)
    weights: dict[str, Tensor] | None = None

    def load_into(self, model: nn.Module) -> None:
        """Put this level's trained weights into ``model``."""
        model.load_state_dict(self.weights if self.weights is not None else trained_weights(load_ticket(self.folder, model), self.folder))


def criterion_context(run: Run, criterion: str, mask: Mask, round_: int, state: dict, allocation: Allocation) -> PruneContext:
    """What the lottery hands a criterion scoring ``mask`` for round ``round_``."""
    return PruneContext(
        initial={n: run.initial[n] for n in mask},
        generator=seeded_generator(run.recipe["seed"], round_, criterion),
        round=round_,
        data=run.data,
        state=state,
        options=dict(run.recipe["lottery"]["criterion_options"]),
        allocation=allocation,
    )


def rewind(run: Run, policy: str, model: nn.Module, mask: Mask, round_: int) -> Start:
    """Call a rewind policy; it returns weights and may move the start step or optimiser."""
    entry = run.registry.get("rewind_policies", policy)
    seed = derived_seed(run.recipe, round_, policy)
    ctx = RewindContext(
        initial=run.initial,
        generator=seeded_generator(seed),
        seed=seed,
        round=round_,
        new_model=lambda: run.new_model(seed),
        options=dict(run.recipe["lottery"]["rewind_options"]),
        run_dir=run.out_dir,
        optimizer=copy.deepcopy(run.recipe["optimizer"]),
        max_steps=run.recipe["trainer"].get("max_steps", -1),
        steps_per_epoch=len(run.data.train_loader(0)),
    )
    source = f"rewind policy {policy!r} (plugin {entry.plugin!r})"
    state = contracts.check_state(call_plugin(source, entry.obj, model, mask, ctx), model.state_dict(), source)
    max_steps = ctx.max_steps
    if not isinstance(ctx.start_step, int) or ctx.start_step < 0 or (max_steps > 0 and ctx.start_step >= max_steps):
        raise PluginError(f"{source} set start_step={ctx.start_step!r}; it must be a step in [0, trainer.max_steps={max_steps})")
    return Start(_share_initial(state, run.initial), ctx.start_step, ctx.optimizer)


def _share_initial(state: Mapping[str, Tensor], initial: dict[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``state``, sharing θ0's tensors where a value equals θ0 exactly.

    Rewinding to θ0 then costs no second copy of the weights (θ0 is never written to).
    """
    out = {}
    for n, t in state.items():
        t, ref = t.detach().to("cpu"), initial.get(n)
        same = ref is not None and ref.shape == t.shape and ref.dtype == t.dtype and torch.equal(ref, t)
        out[n] = ref if same else t.clone()
    return out


def prune_step(run: Run, k: int, prev: Level, round0: Level, allocation: Allocation) -> tuple[Mask, Start, Level]:
    """Round ``k``'s mask and start, plus the level they were derived from (see the module
    docstring for what each ``lottery.mode`` prunes)."""
    lot = run.recipe["lottery"]
    if lot["mode"] == "iterative":
        source, step = prev, allocation
    elif lot["mode"] == "one_shot":
        source, step = round0, allocation.compounded(k)
    else:  # at_init
        source, step = Level(Mask.ones_like(run.model), weights=run.initial), allocation.compounded(k)
    source.load_into(run.model)
    context = criterion_context(run, lot["criterion"], source.mask, k, source.state, step)
    new_mask = prune_with(run.registry, lot["criterion"], run.model, source.mask, context)
    check_progress(run, k, new_mask, prev.mask)
    start = rewind(run, lot["rewind"], run.model, new_mask, k)
    return new_mask, start, source


def check_rounds(recipe: Recipe, dense: Mask) -> Allocation:
    """The recipe's allocation over the model's layers (a wrong ``layer_rates`` name fails
    here), and a one-line refusal of more ``lottery.rounds`` than the model can be pruned
    (:func:`lth_core.tickets.limits.rounds_limit`), naming the largest number that makes sense."""
    allocation = Allocation.of_recipe(recipe, dense)
    lot = recipe["lottery"]
    limit = None if recipe["ticket"] else rounds_limit(allocation, dense, lot["mode"], lot["rounds"])
    if limit is not None:
        raise LthError(f"{recipe.source}: lottery.rounds: {lot['rounds']} is more than model {recipe['model']['name']!r} can be pruned "
                       f"at lottery.rate {lot['rate']} ({lot['scope']} scope, {lot['mode']}): {limit.why}; "
                       f"the largest lottery.rounds that makes sense here is {limit.rounds}")
    return allocation


def check_progress(run: Run, k: int, mask: Mask, previous: Mask) -> None:
    """Stop when round ``k`` would train round ``k-1``'s mask again (pruning during
    training can reach that sooner than the load check foresees): every later round
    would repeat it, with no end but the disk's."""
    if mask == previous:
        kept = "round 0 is" if k == 1 else f"rounds 0-{k - 1} are"
        raise LthError(f"round {k} would train the same mask as round {k - 1} ({mask.density():.2%} of weights): pruning "
                       f"removes no more weights, so every later round would repeat it; {kept} kept in "
                       f"{run.out_dir}; lottery.rounds: {k - 1} is as far as this run goes")


def control_specs(run: Run) -> list[dict]:
    """Every control of the recipe as ``{name, criterion, rewind}`` (a registered control's
    criterion and rewind policy are the ones its plugin registered it with)."""
    specs = []
    for c in run.recipe["controls"]:
        if set(c) == {"name"}:
            entry = run.registry.get("controls", c["name"])
            specs.append({"name": c["name"], "criterion": entry.extra.get("criterion"), "rewind": entry.extra.get("rewind")})
        else:
            specs.append({"name": c["name"], "criterion": c.get("criterion"), "rewind": c.get("rewind")})
    return specs


def run_controls(run: Run, k: int, total: int, ticket_mask: Mask, start: Start, source: Level) -> None:
    """Train every control beside round ``k``'s ticket; they never feed the next round."""
    for c in control_specs(run):
        c_mask, c_start = ticket_mask, start
        if c["criterion"]:
            source.load_into(run.model)
            context = criterion_context(run, c["criterion"], source.mask, k, source.state, Allocation(scope=run.recipe["lottery"]["scope"]))
            c_mask = match_density(scores_of(run.registry, c["criterion"], run.model, source.mask, context), ticket_mask)
        if c["rewind"]:
            source.load_into(run.model)  # what the main rewind saw
            c_start = rewind(run, c["rewind"], run.model, c_mask, k)
        _, c_row, _ = train(run, k, c["name"], c_mask, c_start, run.out_dir / f"round_{k}" / f"control_{c['name']}")
        run.controls.setdefault(c["name"], []).append(c_row)
        run.say(progress_line(c_row, c["name"], total))
