"""The lth plugin API: every hook a plugin may implement.

This module is the reference. A plugin is any module or object with functions named as
below and decorated with ``lth_core.hookimpl``. It reaches lth through the ``lth``
entry-point group (``[project.entry-points.lth]`` in its pyproject.toml), exactly as the
bundled plugins in ``plugins/`` do.

Registration hooks (``register_*``) receive a ``register`` callable and return nothing:
each call registers one named thing. Names are global across plugins: two plugins
registering the same name in the same kind is an error naming both. Recipes refer to
these names; they never name import paths.

Event hooks (``on_*``) observe a run. ``round_callbacks`` lets a plugin add Lightning
callbacks to a round's ``Trainer``: behaviour during training belongs in callbacks.

Everything a plugin may use is exported by ``lth_core`` itself (the SDK, ``docs/sdk.md``):
contexts, masks, pruning by an allocation, tickets, data, errors, atomic writes, seeds.

The core checks what every plugin returns before using it (each hook below says what it
expects) and runs plugin code through :func:`lth_core.call_plugin`: an exception
a plugin raises, or a result that breaks the contract, ends the run with one line that
names the registered name and the plugin (``lth: error: criterion 'x' (plugin 'y') ...``),
exit status 2; finished rounds keep their tickets. A plugin explains a user's mistake by
raising :class:`lth_core.LthError` with a one-line message.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("lth")
hookimpl = pluggy.HookimplMarker("lth")


@hookspec
def register_criteria(register):
    """Register pruning criteria.

    ``register(name, score_fn, options=None, collects=None)``. ``score_fn(model, mask,
    context)`` is a pure function: given the trained ``model`` (an ``nn.Module``), the
    current :class:`lth_core.Mask` and a :class:`lth_core.PruneContext`, it returns one
    score tensor per prunable parameter name in ``mask``, shaped like the parameter.
    Lower scores are pruned first. The core, not the criterion, turns scores into a new
    mask with the recipe's allocation (``context.allocation``: per-layer rates or global),
    so every criterion works with every allocation. Weights already pruned stay pruned
    whatever their score. Scores must be finite where the mask is still ``True``, and real
    numbers (floating or integer; ``bool`` and complex scores are refused), so the core can
    count exactly how many weights it keeps: a criterion cannot prune more than the recipe asks.

    A criterion whose choice scores cannot express (one that prunes iteratively, rescoring
    as it goes: SynFlow) returns the :class:`lth_core.Mask` it chose instead; the core
    checks that it tightens ``mask`` to exactly ``context.allocation.counts(mask)``. A
    control ranks all weights afresh to match a ticket's density, so there a criterion
    must return scores (its allocation then prunes nothing).

    ``options`` declares the keys it reads from ``context.options`` (the recipe's
    ``lottery.criterion_options``): a list of names, or a pydantic model that also checks
    their values; lth refuses any other key at load. Without ``options=`` every key passes
    and the criterion checks them itself. ``collects(context)``
    declares what the criterion needs gathered while a run trains: the core calls it with
    the :class:`lth_core.RoundContext` of every training run of a recipe that uses the
    criterion anywhere (:func:`lth_core.recipe_uses`) and adds the Lightning callback it
    returns (or nothing, for ``None``). What the callback leaves in ``context.state``
    reaches the criterion as ``PruneContext.state`` when it prunes the next round.
    """


@hookspec
def register_rewind_policies(register):
    """Register rewind policies: what the surviving weights become before a round.

    ``register(name, rewind_fn, options=None, collects=None)``. ``rewind_fn(model, mask,
    context) -> dict[str, Tensor]`` returns a full state dict (every parameter and buffer
    of ``model``) to load before the next round trains. ``model`` holds the weights just
    trained; ``context`` is a :class:`lth_core.RewindContext` with the initial weights
    θ0, a seeded ``torch.Generator`` and a factory for fresh models. The core applies the
    mask after loading, so a policy need not. Every tensor must have its parameter's shape,
    be finite and of a real floating type (another precision is cast to the model's).
    ``options`` and ``collects`` are as for criteria (late rewinding collects round 0's
    weights at step k: ``collects`` returns its saving callback for round 0's ticket run).
    """


@hookspec
def register_controls(register):
    """Register controls: experiments run beside the ticket at every pruning round.

    ``register(name, criterion=None, rewind=None, description="")``. A control trains a
    variant of each round's ticket and never feeds the next round. ``criterion`` (a
    registered criterion name) builds a different mask with exactly the ticket's density
    in every layer (e.g. random pruning); ``rewind`` (a registered rewind policy name)
    starts training from other weights (e.g. random reinitialisation). Either may be
    ``None`` to keep the ticket's own.
    """


@hookspec
def register_merge_strategies(register):
    """Register model-merging strategies that combine tickets (``lth merge``).

    ``register(name, merge_fn)``. ``merge_fn(tickets, context, **options) -> MergeResult``
    receives two or more :class:`lth_core.Ticket` of one architecture, trained on
    the same classes, in the order the user gave them (``ticket.final`` holds the trained
    weights, ``ticket.init`` the rewind weights, ``ticket.mask`` the mask), and a
    :class:`lth_core.MergeContext` (model name and factory, data, a seeded
    generator, and ``retrain(mask)`` to train a combined mask with the recipe's training).
    It returns a :class:`lth_core.MergeResult`: merged ``weights`` and ``mask``, or
    ensemble ``members``; averaging strategies add ``endpoints`` so the core measures the
    loss barrier on the linear path. It must not modify the tickets. ``options`` come from
    ``lth merge --option key=value`` and are validated against ``merge_fn``'s keyword
    parameters (or the pydantic model given as ``options=``). A strategy that cannot handle the tickets (an unsupported architecture)
    raises :class:`lth_core.LthError` saying what it supports. The core evaluates
    every ticket and the merge, saves the merged ticket and writes ``merge.json``.
    """


@hookspec
def register_models(register):
    """Register model architectures.

    ``register(name, factory)``. ``factory(input_shape, num_classes, **options)`` returns a
    freshly initialised ``nn.Module`` mapping a batch of inputs shaped
    ``(batch, *input_shape)`` to logits ``(batch, num_classes)``. Options come from the
    recipe's ``model:`` section; the factory's keyword parameters (with defaults and type
    annotations) define which options exist, and recipes are validated against them (every
    annotation pydantic can check: ``int``, ``list[int]``, ``float | None``,
    ``Literal[...]``); ``register(name, factory, options=Model)`` validates them against a
    pydantic model instead. Options reach the factory as written, never converted.
    The caller seeds the global RNG before calling, so initialisation is repeatable. The
    core checks the result: an ``nn.Module`` with at least one prunable weight, finite
    weights, and finite ``(2, num_classes)`` logits for two real inputs (evaluated in eval
    mode without gradients, the RNG restored afterwards, so the check changes nothing).
    """


@hookspec
def register_datasets(register):
    """Register data sets.

    ``register(name, factory)``. ``factory(**options) -> lth_core.DataBundle`` loads the
    whole data set once into tensors (inputs float32, labels int64) with its official
    train/test split. The core holds a validation split out of the training tensors and
    batches by indexing, so factories only load and normalise. Byte data (images) may
    stay bytes: ``uint8`` inputs with a :class:`lth_core.Normalization` that the loaders
    apply per batch. Options come from the
    recipe's ``data:`` section (minus the core's own keys) and are validated against the
    factory's keyword parameters (or the pydantic model given as ``options=``). The core checks the bundle: no empty split, one label
    per input, finite float32 inputs (or ``uint8`` with a valid normalization) of one
    shape, int64 labels in ``0..num_classes-1``. The factory is called once per process
    for the same options while runs use its data: it returns the same data for them.
    A factory that cannot find its files raises :class:`lth_core.LthError` saying
    where it looked and what to do.

    Data that does not fit in memory: return an :class:`lth_core.DatasetBundle` instead,
    the train and test split as map-style torch ``Dataset``s of ``(input tensor, label)``
    items (``uint8`` images with a normalization, or float32; torchvision transforms v2
    for decoding and resizing). The core streams them through ``DataLoader`` workers
    (``data.workers``) in the tensor path's seeded order, holds the validation split out by
    seed and resumes a killed run at the same batch; random transforms belong in the
    recipe's ``data.augment``, drawn per step, not in the datasets. The first and last item
    of each split are checked as above.
    """


@hookspec
def register_initializers(register):
    """Register weight initialisations that a recipe's ``init:`` applies to a new model.

    ``register(name, init_fn)``. ``init_fn(model, generator, **options) -> dict[str, Tensor]``
    returns new values for the parameters it re-initialises (usually the prunable weights),
    keyed by parameter name and shaped like them; parameters it leaves out keep the model
    factory's initialisation (tensors of the parameter's shape, finite, real floating).
    ``generator`` is a seeded CPU ``torch.Generator``. The core
    applies it whenever it builds a model (θ0, and the fresh models of reinitialisation
    controls), so every network of a run shares the distribution. A recipe selects it with
    ``init: signed_kaiming_constant`` or ``init: {name: ..., option: value}``; options are
    validated against ``init_fn``'s keyword parameters (or ``options=``'s model). Supermasks depend on it: edge-popup
    works far better from signed constant weights than from Gaussian ones.
    """


@hookspec
def register_callbacks(register):
    """Register named Lightning callbacks that a recipe switches on.

    ``register(name, factory, options=None, refers=None)``. ``factory(context, **options)`` receives the
    :class:`lth_core.RoundContext` of each training run (every round and control)
    and returns a ``pytorch_lightning.Callback`` for it, or ``None`` to stay out of that
    run. A recipe lists them: ``callbacks: [{name: gradual_pruning, target: 0.1}]``; the
    options are validated against the factory's keyword parameters (or ``options=``'s
    model). ``refers`` maps
    options that name other registered things to their kind (``{"criterion":
    "criteria"}``), so :func:`lth_core.recipe_uses` sees them (and a criterion's
    ``collects`` is switched on when a callback prunes with it). A callback that prunes
    during training computes the new mask with ``context.prune(criterion, model, mask,
    allocation, initial=...)`` (the rounds' own pruning) or its own rule, and calls
    ``context.module.set_mask(mask)`` (never assigns ``module.mask``); the ticket keeps
    the mask in force when training ends. The core
    checks that mask when training ends: the round's layers and shapes, ``torch.bool``,
    only tighter than the round's start mask, and every pruned weight exactly zero.

    **A callback that owns the mask** (``owns_mask = True`` on the callback: RigL, SET,
    movement pruning) may also grow it back: its ``set_mask`` may bring back weights
    pruned during the run, never one the round started without (a regrown weight is zero,
    having been pruned, and its state in every optimiser of the run, Adam's moments or
    SGD's momentum, is reset to zero). One owner per training run: a recipe whose callbacks bring
    two is refused before training. What the core still promises with an owner: when
    training ends the ticket's mask is the one in force (``context.module.mask``), fitting
    the round's layers, ``torch.bool``, and every weight it prunes exactly zero; the run's
    summary reports the final network (an earlier evaluation was another mask's, so early
    stopping does not pick it); a checkpoint inside the run holds the mask in force, the
    weights, every optimiser's state and the owner's ``state_dict()`` (its scores, its
    records), so a killed run resumes at the same mask, scores and optimiser state. An
    owner that needs the gradient pruned weights would get (RigL regrows where it is
    largest) calls ``context.module.capture_dense_grads()`` before the step's backward (in
    ``on_train_batch_start``) and reads ``context.module.dense_grads()`` after it (averaged
    over the processes of a data-parallel run). ``context.last_step()`` tells a schedule
    where training ends.

    Checkpoints inside a run (:mod:`lth_core.engines.checkpoints`) keep a callback's
    ``state_dict()`` and give it back with ``load_state_dict`` at the first batch of the
    resumed run, after ``on_train_start`` saw the run's start. Define both (``state_dict``
    may return ``{}`` when ``on_train_start`` rebuilds everything); a run with a callback
    that does not define ``state_dict`` writes no checkpoints. The same holds for
    ``round_callbacks``.
    """


@hookspec
def register_commands(register):
    """Register ``lth`` subcommands (argparse's counterpart of simonw/llm's ``register_commands``).

    ``register(name, run, help="", configure=None)``. ``configure(parser)`` adds the
    command's arguments to its ``argparse`` subparser; ``run(args) -> int`` does the work
    and returns the exit status. An :class:`lth_core.LthError` raised inside becomes
    the usual one-line ``lth: error: ...`` with exit status 2. lth's own commands (``run``,
    ``report``, ``merge``, ...) register through this hook too, from the modules in
    :data:`lth_core.plugin_api.registry.CORE_PLUGINS`; a plugin may not take their names.
    Plugins are loaded for a command only when it is not lth's own, so ``lth report`` stays
    fast.
    """


@hookspec
def register_report_sections(register):
    """Register ``lth report`` sections: how the folders a plugin's command writes are shown.

    ``register(name, claims, render)``. ``claims(folder: Path) -> bool`` says whether one
    folder given to ``lth report`` is of this section's kind, from the files in it (an
    ``lth extend`` folder holds ``extend.json``); keep it cheap. ``render(folders:
    list[Path], out: Path) -> list[str]`` gets every folder the section claimed, in the
    user's order, writes its figures into the report folder ``out`` (it exists) and
    returns the section's ``report.md`` lines (Markdown; link figures by file name). The
    core checks that ``claims`` returns ``True`` or ``False`` and ``render`` a list of str.

    ``lth report`` reads finished run folders (``summary.json``) itself and asks lth's own
    sections (``merge``) next, without loading plugins. Only a folder none of them claims
    loads the plugins; it goes to the first section that claims it. Sections follow the
    runs in the report, in registration order. A folder nobody claims is a one-line error.
    """


@hookspec
def register_recipe_sections(register):
    """Register top-level recipe sections that a plugin reads (as pytest's ``pytest_addoption``
    or tox's ``add_config``: the plugin declares its settings, lth checks them).

    ``register(name, model, command=None, usage=None)``. ``model`` is a pydantic model class
    for the section's content: a recipe's ``name:`` mapping must validate against it
    (declare ``extra="forbid"`` to refuse unknown keys, bounds as ``Field`` constraints,
    choices as ``Literal``; ``lth_core.config.Expect`` words a mistake in the user's terms).
    A mistake is one line naming the key, the value and what is valid, before anything
    runs. The recipe keeps the section as written (no defaults filled in), and so does its
    hash; a recipe without the section, or with an empty one (``name: {}``), hashes as if
    the plugin were not installed. Read it through the model, defaults applied, with
    :func:`lth_core.plugin_api.options.section` (``section(recipe, name)``: the model
    instance, or ``None`` when the recipe has no such section). ``name`` may not be one of
    lth's own top-level keys.

    ``command`` (a command the plugin registers) says the section is that command's input:
    ``lth run`` refuses a recipe holding it, naming the command, with ``usage`` (e.g.
    ``"lth extend TICKET --recipe RECIPE --out DIR"``) as the way to use it.
    """


@hookspec
def round_callbacks(context):
    """Return Lightning callbacks to add to one round's ``Trainer`` (or ``None``).

    ``context`` is a :class:`lth_core.RoundContext`: the recipe, round number,
    mask and model. A plugin looks at it and decides whether it has anything to add
    (:func:`lth_core.recipe_uses` says whether the recipe uses one of its names; a
    criterion or rewind policy declares its own collector with ``collects=`` instead).
    Every plugin's list is used.

    Speed: a round with no callbacks trains ``steps_per_call`` (default 50) optimiser
    steps per Lightning call, bit-identical to one step per call. Any callback switches
    its round to one step per call so that every per-step hook fires, unless the callback
    sets the class attribute ``multi_step_safe = True``: it promises to act only between
    calls (``on_train_batch_end`` then fires every ``steps_per_call`` steps, with
    ``trainer.global_step`` counting steps) and never in ``on_before_backward``,
    ``on_after_backward`` or ``on_before_optimizer_step``, which do not fire there.
    """


@hookspec
def on_round_start(context):
    """Called before a round (or a control) trains. ``context`` is a RoundContext."""


@hookspec
def on_round_end(context, ticket, metrics):
    """Called after a round (or a control) has trained and its ticket is saved.

    ``ticket`` is the :class:`lth_core.Ticket`; ``metrics`` the round's summary row
    (weights_remaining, early_stop_step, val_loss_min, test_acc, test_acc_final, ...).
    """


@hookspec
def on_run_end(summary, out_dir):
    """Called once the whole lottery has finished, with the summary dict and run folder."""
