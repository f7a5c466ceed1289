"""BNM: batch nuclear-norm maximisation on the target predictions.

Cui, Wang, Zhuo, Li, Huang & Tian, "Towards Discriminability and Diversity: Batch
Nuclear-norm Maximization under Label Insufficient Situations", CVPR 2020. The nuclear
norm of the ``(b, K)`` matrix of target softmax predictions bounds both their confidence
(Frobenius norm) and their diversity (rank); maximising it sharpens the predictions
without collapsing them onto a few classes, as plain entropy minimisation may. The math
is :func:`tladapt.prediction_losses.batch_nuclear_norm`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import tladapt
from tladapt.prediction_losses import batch_nuclear_norm, marginal_entropy


class BNM:
    """Adds ``-||softmax(logits_t)||_* / b`` as the term ``bnm``.

    The value is a 0-dim float tensor in ``[-1, 0)`` for ``b <= K`` (logged as
    ``loss/bnm``; more negative is more confident and more diverse). Also logs the two
    things it trades: ``bnm/confidence`` (mean max-probability of the target batch) and
    ``bnm/diversity`` (entropy of the batch's mean prediction, nats). Uses target outputs
    only, so it also runs source-free. On CUDA the singular values come from cuSOLVER.
    """

    source_free = True

    @dataclass
    class Options:
        """``[plugins.bnm]`` options."""

        weight: float = tladapt.option(1.0, "coefficient λ of the BNM loss (1 in the paper)", ge=0)

    def __init__(self, options: Options):
        self.options = options

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, out):
        """``{"bnm": Term(-||P_t||_* / b, weight)}``."""
        with torch.no_grad():
            trainer.log("bnm/confidence", out.logits_t.softmax(dim=1).max(dim=1).values.mean())
            trainer.log("bnm/diversity", marginal_entropy(out.logits_t))
        return {"bnm": tladapt.Term(batch_nuclear_norm(out.logits_t), self.options.weight)}
