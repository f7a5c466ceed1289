"""Fine-tuning: freeze layers, re-initialise the head, start from a source model or from scratch.

The four transfer regimes of the CS231n notes ("Transfer Learning", Karpathy et al.,
https://cs231n.github.io/transfer-learning/) and Yosinski, Clune, Bengio & Lipson,
"How transferable are features in deep neural networks?", NIPS 2014, map onto this
plugin plus ``model.init_from`` (the source run whose backbone starts this run, and its head
when it predicts the same classes),
``data.target_labels_per_class`` (the labelled target samples) and ``trainer.lr_mult``:

* fine-tune the whole network: ``init = "source"``, nothing frozen, a small
  ``trainer.lr_mult = {backbone = 0.1}``;
* a linear classifier on frozen top features: ``freeze = ["backbone"]`` and
  ``reinit_head = true`` (the feature-based route, :func:`tladapt.transfer.run_feature_transfer`,
  fits the same classifier in closed form with scikit-learn);
* freeze the first layers only: ``freeze_depth = N``;
* train on the target, initialised from the source: ``init = "source"``,
  ``reinit_head = true``, full learning rates.

Per-layer learning rates need nothing from this plugin: ``trainer.lr_mult`` takes dotted
submodule paths (``{"backbone.0" = 0.1, head = 1.0}``); frozen parameters join no
optimizer group.

Frozen layers stay in eval mode (option ``frozen_eval``, default on): dropout in a
frozen block would otherwise keep perturbing the features the trainable layers see,
and batch-norm running statistics would keep moving although the weights are
"frozen". A frozen block is bit-identical after training, buffers included.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Literal

from torch import nn

import tladapt
from tladapt.config import ConfigError
from tladapt.errors import PluginError
from tladapt.transfer import depth_region


def _eval_only_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """``Module.train`` replacement that keeps the module (and children) in eval mode."""
    return nn.Module.train(self, False)


class Finetune:
    """Fine-tuning regimes: frozen layers, re-initialised head, source or scratch start.

    Logs nothing per step. To fine-tune on the labelled target only, as in the CS231n
    regimes, set ``trainer.source_weight = 0`` with ``data.target_labels_per_class > 0``.
    """

    #: Acts on the model only, so it may run in a source-free run (``data.source_free``).
    source_free = True

    capture_safe = True  # per-step work: device ops of static shapes (trainer.compile = "cudagraph")
    batch_safe = True  # no per-run Python state in the step: seeds train as one batch (tladapt.batched)

    module_names = ()  # what tladapt_setup registers (trainer.lr_mult is checked before any run)

    @dataclass
    class Options:
        """``[plugins.finetune]`` options."""

        init: Literal["source", "scratch"] = tladapt.option(
            "source", "source: start from model.init_from (required); scratch: re-initialise all it loaded")
        freeze: list[str] = tladapt.option(
            [], "module paths to freeze, e.g. ['backbone.0'] or ['backbone'] (under the trainer's modules)")
        freeze_depth: int = tladapt.option(0, "freeze the first N parametrised layers of the backbone", ge=0)
        reinit_head: bool = tladapt.option(False, "re-initialise the classifier head (a new linear classifier)")
        frozen_eval: bool = tladapt.option(True, "keep frozen layers (and the dropout/BN in them) in eval mode")

    def __init__(self, options: Options):
        self.options = options
        self.frozen: list[str] = []

    @tladapt.hookimpl
    def tladapt_check(self, config, task):
        """Before any run: ``init = 'source'`` has a ``model.init_from``, ``freeze_depth`` fits the
        backbone, and ``freeze`` paths into the backbone or head exist (paths into modules that
        plugins register are checked in ``tladapt_setup``).

        Raises:
            ConfigError: naming the option and what was expected.
        """
        o = self.options
        if o.init == "source" and not config.model.init_from:
            raise ConfigError("plugins.finetune.init = 'source' needs model.init_from = a source run directory "
                              "(e.g. tladapt run ... --init-from runs/<exp>/<task>/source_only/seed0-...); "
                              "use init = 'scratch' to train from a random start")
        if task.modules is None:  # a plugin transforms the inputs: the model exists only in the run
            return
        if o.freeze_depth:
            try:
                depth_region(task.backbone, o.freeze_depth)
            except ConfigError as err:
                raise ConfigError(f"plugins.finetune.{err}") from None
        for path in o.freeze:
            if path.split(".")[0] in task.modules:
                self._submodule(task.modules, path)

    @staticmethod
    def _submodule(modules, path: str):
        try:
            return modules.get_submodule(path)
        except AttributeError:
            raise ConfigError(f"plugins.finetune.freeze names unknown module {path!r}: modules are "
                              f"{', '.join(n for n, _ in modules.named_modules() if n)}") from None

    @tladapt.hookimpl
    def tladapt_setup(self, trainer):
        o = self.options
        if o.init == "scratch":
            for m in trainer.modules["backbone"].modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        if o.reinit_head or o.init == "scratch":
            trainer.head.reset_parameters()
        region = depth_region(trainer.backbone, o.freeze_depth) if o.freeze_depth else []
        for path in o.freeze:
            self._submodule(trainer.modules, path)
            region.append(path)
        self.frozen = region
        for path in region:
            module = trainer.modules.get_submodule(path)
            for p in module.parameters():
                p.requires_grad_(False)
            if o.frozen_eval:
                for m in module.modules():
                    m.train = types.MethodType(_eval_only_train, m)
                module.eval()

    @tladapt.hookimpl
    def tladapt_state_dict(self):
        """The frozen module paths (the frozen weights themselves are in the trainer's modules)."""
        return {"frozen": list(self.frozen)}

    @tladapt.hookimpl
    def tladapt_load_state_dict(self, state):
        """Check that this run freezes what the checkpointed run froze.

        Raises:
            PluginError: if the frozen paths differ (the options or the model changed).
        """
        if list(state["frozen"]) != self.frozen:
            raise PluginError(f"finetune: the checkpoint froze {state['frozen']}, this run freezes {self.frozen}")

    @tladapt.hookimpl
    def tladapt_fit_end(self, trainer, results):
        results["finetune"] = {"frozen": self.frozen, "init": self.options.init,
                               "init_from": trainer.config.model.init_from,
                               "reinit_head": self.options.reinit_head}
