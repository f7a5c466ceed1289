"""The plugin contract: every hook the trainer calls, in the order it calls them.

A plugin is a class whose methods carry ``@tladapt.hookimpl`` and are named after
the specifications below; it may implement any subset, and a method may take any
subset of a hook's arguments (pluggy matches them by name). A plugin class with a
nested ``Options`` dataclass is constructed as ``Plugin(options)`` with the values
of its ``[plugins.<name>]`` config table; without one, as ``Plugin()``. One
instance lives for one run (one task and seed), so it may keep per-run state.

Before any run of a command, for every config and task:  tladapt_check

Call order for one run::

    tladapt_validators -> tladapt_transform_domains -> tladapt_setup -> tladapt_fit_start
    per step:  tladapt_source_weights -> tladapt_losses -> tladapt_balance_losses
               -> (backward, optimizer step)
               -> tladapt_step_end
    every eval_every steps and at the end:  the validators' scores, then tladapt_evaluate
    tladapt_fit_end
    at every checkpoint:  tladapt_state_dict; when a run resumes:  tladapt_load_state_dict

The trainer is the only caller. Hooks that return values (``source_weights``,
``losses``) are called for every plugin; ``None`` means "nothing from me".
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("tladapt")


@hookspec
def tladapt_check(config, task):
    """Check the plugin's options against the rest of the config and a task's data, before any run.

    Called for every task of every config of a command before the first run directory
    exists, so a command with a bad combination fails before any training. Checks of one
    option belong in the ``Options`` dataclass (``tladapt.option(..., ge=0)``); checks that
    involve the plugin's options together belong in its ``__init__`` (also run before any
    run); this hook is for checks against the config (``config.trainer.batch_size``,
    ``config.model.init_from``, ...) and the task's data and model shapes.

    Args:
        config: the resolved :class:`tladapt.config.Config`.
        task: a :class:`tladapt.preflight.TaskPreview`: the task's splits on the CPU
            (``source``, ``source_val``, ``target``, ``target_labelled``, as the trainer
            names them) and the backbone and head built on the ``meta`` device
            (``backbone``, ``head``, ``modules``, ``feature_dim``, ``num_classes``),
            and ``shared_head`` (one head classifies both domains).

    Returns:
        None.

    Raises:
        tladapt.errors.ConfigError: naming ``plugins.<name>.<key>`` and what was expected.
    """


@hookspec
def tladapt_transform_domains(trainer):
    """Replace the run's domains before any model exists: transforms that change the input space.

    Examples: TCA / JDA / BDA embeddings (the ``jda`` plugin), which map the inputs to a
    ``k``-dimensional subspace fitted on the whole labelled source and unlabelled target.
    Called once per run, after the task is split and before the pipeline, the backbone and
    the heads are built: ``trainer.source`` (labelled training split; None in a
    source-free run), ``trainer.source_val``, ``trainer.target`` (unlabelled) and
    ``trainer.target_labelled`` are :class:`tladapt.data.Domain` objects on the device,
    and a plugin may replace each by a transformed domain with the same samples in the
    same order, the same labels, name and classes, and any input shape common to all of
    them. The backbone is then built for the new shape (``model.backbone = "auto"``: an MLP
    for vectors). Nothing of the model exists yet (no ``trainer.backbone``, no
    ``trainer.log``); several implementations run in pluggy's order (``tryfirst`` /
    ``trylast`` order them), each seeing the domains the previous one left. Transforms that keep the input space (CORAL's re-colouring) may use
    ``tladapt_fit_start`` instead.

    Args:
        trainer: the run's trainer.

    Returns:
        None.
    """


@hookspec
def tladapt_setup(trainer):
    """Build the plugin's modules and register them with the trainer.

    Called once per run, after the backbone and classifier head exist and the
    task's domains are on the training device, before the optimizer is built.
    Register a module with ``trainer.add_module(name, module, lr_mult=...)`` so it
    gets the device, an optimizer parameter group and a place in checkpoints.
    ``trainer.feature_dim`` and ``trainer.num_classes`` give the sizes. Name the
    modules in the plugin's ``module_names`` (a tuple, ``()`` for none; set in
    ``__init__`` when the options decide them) so that ``trainer.lr_mult`` keys
    are checked before any run; without it they are checked at registration.

    Args:
        trainer: the :class:`tladapt.trainer.Trainer` of this run.

    Returns:
        None.
    """


@hookspec
def tladapt_fit_start(trainer):
    """Whole-dataset work before the first step.

    Examples: importance weights over the whole source (KMM, KLIEP), closed-form
    feature transforms (CORAL re-colouring ``trainer.source``), initial
    pseudo-labels. ``trainer.source`` (labelled, training split) and
    ``trainer.target`` (unlabelled) are :class:`tladapt.data.Domain` objects on
    the device; a plugin may replace them with transformed copies of the same
    length, and should then mark its implementation
    ``@tladapt.hookimpl(tryfirst=True)`` so that plugins measuring the data
    (e.g. importance weights) see the transformed domains.

    A resumed run calls this hook again (``trainer.resuming`` is then True) before
    ``tladapt_load_state_dict``: work whose result the plugin's state restores may be
    skipped.

    Args:
        trainer: the run's trainer.

    Returns:
        None.
    """


@hookspec
def tladapt_source_weights(trainer, batch):
    """Per-sample weights for this step's source classification loss.

    Args:
        trainer: the run's trainer.
        batch: the step's :class:`tladapt.data.pipeline.Batch`; ``batch.idx_s``
            indexes ``trainer.source`` so per-sample state can be gathered.

    Returns:
        A float tensor of shape ``(batch_size,)`` on the device, or None. The
        source loss is ``mean_i(w_i * CE_i)`` over the batch (an importance-
        weighted empirical risk: weights are not renormalised per batch).
        At most one active plugin may return weights; two is an error naming both.
    """


@hookspec
def tladapt_losses(trainer, batch, out):
    """Adaptation loss terms for this step.

    Args:
        trainer: the run's trainer; ``trainer.progress`` is the fraction of
            training done, in [0, 1).
        batch: the step's :class:`tladapt.data.pipeline.Batch` (no target labels).
        out: the step's :class:`tladapt.trainer.Outputs`: backbone features and
            classifier logits for both domains, from the trainer's single forward
            pass. Re-run the backbone only if the method needs it.

    Returns:
        ``{name: tladapt.Term(value, weight)}`` or None. The trainer adds
        ``weight * value`` of every term to the source loss and logs each value
        as ``loss/<name>``. Two plugins returning the same name is an error that
        names both plugins. Nothing here may force a host sync (no ``.item()``);
        log per-step diagnostics with ``trainer.log(tag, tensor)``.
    """


@hookspec
def tladapt_balance_losses(trainer, terms):
    """Re-weight this step's loss terms (multi-task loss balancing).

    Called after ``tladapt_losses`` with every term of the step: the trainer's
    ``source`` and ``target`` and each plugin's. For schemes that weigh the terms from
    the step itself, e.g. uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018) or
    GradNorm (Chen et al., ICML 2018). At most one active plugin may implement it.

    Args:
        trainer: the run's trainer.
        terms: ``{name: tladapt.Term}``, a copy (changing it changes nothing).

    Returns:
        None, or ``{name: Term}``: for an existing name a Term with the **same value
        tensor** and a new weight (a float or a 0-dim tensor, which may carry a gradient:
        the weight is then learnt), for a new name an extra term (e.g. a regulariser).
        Anything else is an error naming the plugin.
    """


@hookspec
def tladapt_step_end(trainer, step):
    """After the optimizer step: schedules, EMA teachers, pseudo-label refresh.

    Args:
        trainer: the run's trainer.
        step: the step just finished, counted from 0.

    Returns:
        None.
    """


@hookspec
def tladapt_evaluate(trainer, metrics, target_labels):
    """Add metrics and validator scores at an evaluation point.

    Called in ``torch.no_grad()`` with the models in eval mode, after the trainer
    computed ``metrics["source_val_acc"]``, the oracle ``metrics["target_acc"]`` and
    the run's validator scores ``metrics["validator/<name>"]``. A label-free score
    that needs no more than :class:`tladapt.validators.EvalOutputs` is better
    contributed as a validator (``tladapt_validators``): selection and sweeps use those.

    Args:
        trainer: the run's trainer.
        metrics: ``dict[str, float]``, updated in place. Keys become TensorBoard
            tags: a key with a ``/`` is used as the tag, otherwise ``metrics/<key>``.
        target_labels: ``int64`` tensor ``(n_target,)`` on the device: the hidden
            target labels, for ORACLE diagnostics only (log them under
            ``oracle/...``); never use them to train.

    Returns:
        None.
    """


@hookspec
def tladapt_validators():
    """Contribute label-free validators (model-selection scores) to every run.

    Called once per run, when the trainer is built. The built-in validators come through
    this same hook from :class:`tladapt.validators.CoreValidators`, which every plugin
    manager registers. Each validator's score is computed at every evaluation point on one
    :class:`tladapt.validators.EvalOutputs` bundle, logged as ``validator/<name>`` and stored
    in the run's evaluation records (``results.json`` ``history``), before
    ``tladapt_evaluate`` is called.

    Returns:
        A list of :class:`tladapt.validators.Validator` instances, or None. Names are unique
        across all plugins; two plugins contributing the same name is an error naming both.
    """


@hookspec
def tladapt_fit_end(trainer, results):
    """After the last evaluation, before ``results.json`` is written.

    Args:
        trainer: the run's trainer.
        results: ``dict`` that becomes ``results.json``; may be updated in place
            (JSON-serialisable values only).

    Returns:
        None.
    """


@hookspec
def tladapt_state_dict(trainer):
    """The plugin's own state for a checkpoint: everything its future depends on that is
    not in a module registered with ``trainer.add_module`` (those are saved by the trainer).

    Called after a step at every checkpoint (every ``trainer.checkpoint_every`` steps,
    at the end, on SIGINT/SIGTERM, and for ``best.pt``). Examples: an EMA teacher's
    weights, a pseudo-label bank, importance weights, a closed-form transform, step
    counters. A plugin whose behaviour after a resume would differ from an
    uninterrupted run is missing state here (``tests/test_resume.py`` resumes every
    installed plugin and compares bit for bit). Implement both hooks of the pair or neither.

    Args:
        trainer: the run's trainer.

    Returns:
        None (nothing to save) or a dict whose values are tensors, ``int``, ``float``,
        ``str``, ``bool``, ``None`` and lists, tuples and dicts of these: what
        ``torch.load(..., weights_only=True)`` reads back. No numpy arrays, no objects.
    """


@hookspec
def tladapt_load_state_dict(trainer, state):
    """Restore what this plugin's ``tladapt_state_dict`` returned, when a run resumes.

    Called only for plugins that saved a state, after ``tladapt_setup`` and
    ``tladapt_fit_start`` and after the trainer restored its modules, before the first
    resumed step. Tensors arrive on the CPU: move them to ``trainer.device``.

    Args:
        trainer: the run's trainer.
        state: the dict this plugin returned from ``tladapt_state_dict``.

    Returns:
        None.
    """
