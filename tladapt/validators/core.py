"""The built-in validators, contributed by the built-in plugin :class:`CoreValidators`, which
every plugin manager registers ("core features are plugins too"). Each class's docstring
gives its paper and formula; the math is in :mod:`tladapt.validators.scores`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import tladapt
from tladapt.validators import scores
from tladapt.validators.base import Validator
from tladapt.validators.outputs import EvalOutputs


class SourceValAcc(Validator):
    """Source validation accuracy (%), the classic proxy: argmax accuracy on the held-out source split."""

    name, direction, needs_source_val = "source_val_acc", "max", True

    def __call__(self, out: EvalOutputs) -> float:
        return 100.0 * (out.source_val_logits.argmax(1) == out.source_val_labels).double().mean().item()


class SourceValLoss(Validator):
    """Source validation loss: mean cross-entropy ``-(1/m) sum_i log p_i[y_i]`` on the held-out source split."""

    name, direction, needs_source_val = "source_val_loss", "min", True

    def __call__(self, out: EvalOutputs) -> float:
        return F.cross_entropy(out.source_val_logits.float(), out.source_val_labels).item()


class Entropy(Validator):
    """Target prediction entropy ``(1/n) sum_i H(p_i)`` in nats (Grandvalet & Bengio, NeurIPS 2004).

    Lower is better. pytorch-adapt's ``EntropyValidator`` returns its negative; skada's
    ``PredictionEntropyScorer`` returns ``-H / C`` (a mean over the ``n x C`` terms).
    A collapsed model (every sample confidently in one class) scores best: read it with IM.
    """

    name, direction = "entropy", "min"

    def __call__(self, out: EvalOutputs) -> float:
        return scores.mean_entropy(out.target_logits)


class InformationMaximization(Validator):
    """Information maximisation ``H(mean_i p_i) - mean_i H(p_i)`` on the target (Gomes et al., NeurIPS 2010).

    Used as a validator by Musgrave et al. 2022 (pytorch-adapt's ``IMValidator``: the same
    value). A collapsed model has ``H(mean p) = 0`` and cannot score well.
    """

    name, direction = "im", "max"

    def __call__(self, out: EvalOutputs) -> float:
        return scores.information_maximization(out.target_logits)


class BatchNuclearNorm(Validator):
    """BNM: nuclear norm of the target softmax matrix over n, ``||P||_* / n`` (Cui et al., CVPR 2020).

    As a validator: Musgrave et al. 2022 (pytorch-adapt's ``BNMValidator``: the same value).
    """

    name, direction = "bnm", "max"

    def __call__(self, out: EvalOutputs) -> float:
        return scores.batch_nuclear_norm(out.target_logits)


@dataclass(frozen=True)
class SoftNeighborhoodDensity(Validator):
    """SND: mean entropy of each target sample's softmax similarity to the others (Saito et al., ICCV 2021).

    ``s_ij`` is the cosine similarity of the softmax vectors of samples ``i != j``; SND is
    ``mean_i H(softmax_j(s_ij / T))`` with ``T = temperature``. Higher is better. Same value
    as pytorch-adapt's ``SNDValidator``. Known failure: it rewards tight, uniform
    neighbourhoods, which a model that maps everything to one class also has.
    """

    name, direction = "snd", "max"
    temperature: float = 0.05

    def __call__(self, out: EvalOutputs) -> float:
        return scores.soft_neighborhood_density(out.target_logits, self.temperature)


class ClassAMI(Validator):
    """ClassAMI: adjusted mutual information of target predictions and k-means clusters (k = C) of target features (Musgrave et al. 2022).

    k-means++ with 3 restarts, seeded by the run's seed; AMI from
    scikit-learn. Higher is better.
    """

    name, direction = "class_ami", "max"

    def __call__(self, out: EvalOutputs) -> float:
        return scores.class_ami(out.target_features, out.target_logits.argmax(1), out.target_logits.shape[1], out.seed)


@dataclass(frozen=True)
class DeepEmbeddedValidation(Validator):
    """DEV: importance-weighted source validation loss with a control variate (You et al., ICML 2019).

    Weights ``w = (n_s / n_t) P(target|f) / P(source|f)`` from a logistic-regression domain
    classifier on backbone features (source training subsample vs target subsample), losses
    the per-sample cross-entropy on the held-out source split, ``R = mean(w l) + eta mean(w) -
    eta`` with ``eta = -Cov(w l, w) / Var(w)``. Lower is better (pytorch-adapt's
    ``DeepEmbeddedValidator`` returns ``-R``). ``normalization = "max"`` is DEVN.
    """

    name, direction, needs_source_val = "dev", "min", True
    normalization: str = "none"

    def __call__(self, out: EvalOutputs) -> float:
        weights = out.source_val_weights
        losses = F.cross_entropy(out.source_val_logits.float(), out.source_val_labels, reduction="none")
        return scores.dev_risk(weights, losses.double().cpu().numpy(), self.normalization)


@dataclass(frozen=True)
class NormalizedDEV(DeepEmbeddedValidation):
    """DEVN: DEV with max-normalised weights, ``w <- w / max(w) - mean(w / max(w)) + 1`` (Musgrave et al. 2022).

    Bounds the influence of a few huge importance weights. Lower is better.
    """

    name = "devn"
    normalization: str = "max"


@dataclass(frozen=True)
class MixVal(Validator):
    """MixVal: accuracy on mixed target pairs against their dominant pseudo-label, intra- and inter-class averaged (Hu et al., NeurIPS 2023).

    ``m_i = alpha x_i + (1 - alpha) x_pi(i)`` with a permutation ``pi`` of the target
    subsample (seeded by the run's seed, the same at every evaluation), labelled with the
    model's prediction of ``x_i``; the score is the mean of the accuracies over pairs with
    equal and with different pseudo-labels. Source-free and source-anchored in the sense of
    reading only the model and target inputs; higher is better. Equals skada's
    ``MixValScorer`` for the same permutation.
    """

    name, direction = "mixval", "max"
    alpha: float = 0.55

    def __call__(self, out: EvalOutputs) -> float:
        gen = torch.Generator().manual_seed(out.seed)
        perm = torch.randperm(out.target_inputs.shape[0], generator=gen).to(out.target_inputs.device)
        return scores.mixval(out.target_inputs, out.classify, perm, self.alpha)


#: The built-in validators, in the order runs compute and tables list them.
CORE_VALIDATORS: tuple[Validator, ...] = (
    SourceValAcc(), SourceValLoss(), Entropy(), InformationMaximization(), BatchNuclearNorm(),
    SoftNeighborhoodDensity(), ClassAMI(), DeepEmbeddedValidation(), NormalizedDEV(), MixVal(),
)


class CoreValidators:
    """The built-in label-free validators (registered in every run's plugin manager)."""

    name = "tladapt"

    @tladapt.hookimpl
    def tladapt_validators(self):
        return list(CORE_VALIDATORS)
