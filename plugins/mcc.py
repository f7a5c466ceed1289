"""MCC: minimum class confusion on the target batch.

Jin, Wang, Long & Wang, "Minimum Class Confusion for Versatile Domain Adaptation",
ECCV 2020. The target predictions, softened by a temperature and weighted by their
certainty, form a class-confusion matrix; the loss is its normalised off-diagonal mass,
so minimising it makes the classifier stop confusing classes on the target. No domain
discriminator and no second network: it composes with any alignment method. The math is
:func:`tladapt.prediction_losses.minimum_class_confusion`.
"""

from __future__ import annotations

from dataclasses import dataclass

import tladapt
from tladapt.losses import entropy
from tladapt.prediction_losses import minimum_class_confusion


class MCC:
    """Adds the MCC loss of the target batch's logits as the term ``mcc``.

    Per step, with ``logits_t`` the ``(b, K)`` target logits of the trainer's forward
    pass: ``{"mcc": Term(minimum_class_confusion(logits_t, temperature), weight)}``, a 0-dim
    float tensor in ``[0, (K - 1) / K]`` (logged as ``loss/mcc``). Also logs
    ``mcc/target_entropy``, the mean prediction entropy (nats, untempered) of the target
    batch. Uses target outputs only, so it also runs source-free.
    """

    source_free = True

    @dataclass
    class Options:
        """``[plugins.mcc]`` options."""

        weight: float = tladapt.option(1.0, "coefficient μ of the MCC loss (1 in the paper)", ge=0)
        temperature: float = tladapt.option(2.5, "softmax temperature T of the target predictions (2.5 in the paper)",
                                            gt=0)

    def __init__(self, options: Options):
        self.options = options

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, out):
        """``{"mcc": Term(MCC(logits_t), weight)}``."""
        trainer.log("mcc/target_entropy", entropy(out.logits_t.detach()))
        return {"mcc": tladapt.Term(minimum_class_confusion(out.logits_t, self.options.temperature),
                                    self.options.weight)}
