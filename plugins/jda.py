"""JDA, BDA and TCA: a closed-form transfer subspace, fitted once, before any model exists.

* Long, Wang, Ding, Sun & Yu, "Transfer Feature Learning with Joint Distribution
  Adaptation", ICCV 2013 (``method = "jda"``, the default).
* Wang, Chen, Hu, Peng & Yu, "Balanced Distribution Adaptation for Transfer Learning",
  ICDM 2017 (``method = "bda"``, balance ``mu``).
* Pan, Tsang, Kwok & Yang, "Domain Adaptation via Transfer Component Analysis", IEEE TNN
  2011 (``method = "tca"``).

In ``tladapt_transform_domains`` the plugin fits the subspace on the whole labelled source
training split and the whole unlabelled target (:func:`tladapt.subspace.fit_subspace`:
exact generalised eigenproblem in float64 on the device, 1-NN pseudo-labels refined over
``iterations``) and replaces every domain of the run by its ``dim``-dimensional embedding;
the backbone is then built on the embedding (an MLP with ``model.backbone = "auto"``), so
any deep method composes on top (e.g. JDA + CDAN + self-training). With no other plugin
and ``trainer.steps`` small, the run is "JDA features + a classifier".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

import tladapt
from tladapt.data.domain import Domain
from tladapt.errors import ConfigError
from tladapt.subspace import SubspaceFit, SubspaceOptions, fit_subspace


def _vectors(domain: Domain) -> torch.Tensor:
    """A domain's model inputs (its evaluation view) as ``(n, m)`` float64 rows."""
    return domain.inputs().reshape(len(domain), -1).double()


class JDA:
    """The subspace plugin: replaces the run's domains by their TCA / JDA / BDA embedding.

    All four domains (source training split, source validation split, unlabelled target,
    labelled target subset) are mapped by the same fitted map, ``(n, dim)`` float32, each
    row of norm ``sqrt(dim)`` (the classic embedding's unit rows, scaled so that entries are
    of unit size for the backbone: on unit rows in 100 dimensions the default MLP barely
    trains, source validation accuracy 57 % on amazon->webcam); labels, names and classes
    are kept. Only the source training split's
    labels and the target's inputs enter the fit (the validation split and the labelled
    target subset are embedded as new samples).

    Logs at the start ``jda/objective`` (the last solve's MMD term ``tr(AᵀKᵀMKA)``) and
    ``jda/pseudo_label_change`` (fraction of target pseudo-labels changed by the last
    iteration); at each evaluation the ORACLE ``oracle/jda_1nn_acc`` (accuracy, percent, of
    the fit's final 1-NN pseudo-labels: what the classic JDA protocol reports).
    ``results.json`` gets ``jda``: the options and both quantities per iteration.

    State (``tladapt_state_dict``): the projection and the pseudo-labels; a resumed run
    recomputes the (deterministic) fit and checks it equals the saved one.

    Raises:
        ConfigError: in ``tladapt_transform_domains``, for a source without labels, or a
            ``dim`` larger than the problem (the input dimension for ``kernel =
            "primal"``, the number of samples for the kernels).
    """

    @dataclass
    class Options:
        """``[plugins.jda]`` options."""

        method: Literal["jda", "bda", "tca"] = tladapt.option(
            "jda", "jda (marginal + conditional MMD), bda (balanced by mu) or tca (marginal only, one solve)")
        dim: int = tladapt.option(100, "subspace dimension k (100 in JDA)", gt=0)
        lam: float = tladapt.option(0.1, "regularisation λ (JDA: 0.1 digits and COIL, 1.0 SURF)", gt=0)
        kernel: Literal["primal", "linear", "rbf"] = tladapt.option(
            "primal", "primal: a linear map of the inputs (m x m problem); linear / rbf: kernel maps (n x n)")
        gamma: float = tladapt.option(1.0, "kernel = 'rbf': k(x, y) = exp(-gamma ||x - y||^2)", gt=0)
        iterations: int = tladapt.option(10, "pseudo-label refinements T (10 in JDA; tca: 1)", gt=0)
        mu: float = tladapt.option(0.5, "method = 'bda': balance μ of the conditional term (0.5 is JDA)", ge=0, le=1)
        normalize_inputs: bool = tladapt.option(True, "l2-normalise every input before the fit (the JDA code)")

    def __init__(self, options: Options):
        self.options = options
        self.fit: SubspaceFit | None = None

    def _check_fits(self, source: Domain | None, target: Domain) -> None:
        """The subspace can be fitted on these domains.

        Raises:
            ConfigError: without source labels, or ``dim`` larger than the problem.
        """
        o = self.options
        if source is None or source.y is None:
            raise ConfigError("plugins.jda fits the subspace with the source labels: it needs a labelled source "
                              "(not data.source_free, not data.source_labels = false)")
        size = math.prod(source.input_shape) if o.kernel == "primal" else len(source) + len(target)
        if o.dim > size:
            what = "input dimension" if o.kernel == "primal" else "number of source and target samples"
            raise ConfigError(f"plugins.jda.dim = {o.dim} exceeds the problem's size, the {what} ({size})")

    @tladapt.hookimpl
    def tladapt_check(self, task):
        """Before any run: the subspace can be fitted on the task's splits (:meth:`_check_fits`)."""
        self._check_fits(task.source, task.target)

    @tladapt.hookimpl
    def tladapt_transform_domains(self, trainer):
        """Fit the subspace and embed every domain of the run."""
        o = self.options
        self._check_fits(trainer.source, trainer.target)
        xs, xt = _vectors(trainer.source), _vectors(trainer.target)
        options = SubspaceOptions(o.method, o.dim, o.lam, o.kernel, o.gamma, o.iterations, o.mu, o.normalize_inputs)
        self.fit = fit_subspace(xs, trainer.source.y, xt, len(trainer.source.classes), options)
        for role in ("source", "source_val", "target", "target_labelled"):
            domain = getattr(trainer, role)
            if domain is not None:
                setattr(trainer, role, self._embed(domain))

    def _embed(self, domain: Domain) -> Domain:
        # rows of norm sqrt(dim): entries of unit scale for the backbone, the 1-NN geometry unchanged
        z = (self.fit.embed(_vectors(domain)) * math.sqrt(self.options.dim)).to(torch.float32)
        return Domain(domain.name, z, domain.y, domain.classes)

    def _changes(self) -> list[float]:
        labels = self.fit.pseudo_labels
        return [(labels[i] != labels[i - 1]).double().mean().item() for i in range(1, len(labels))]

    @tladapt.hookimpl
    def tladapt_fit_start(self, trainer):
        """Log the fit's last objective and pseudo-label change."""
        trainer.log("jda/objective", float(self.fit.objective[-1]))
        changes = self._changes()
        if changes:
            trainer.log("jda/pseudo_label_change", changes[-1])

    @tladapt.hookimpl
    def tladapt_evaluate(self, trainer, metrics, target_labels):
        """ORACLE accuracy of the fit's final 1-NN pseudo-labels (percent)."""
        final = self.fit.pseudo_labels[-1]
        metrics["oracle/jda_1nn_acc"] = 100.0 * (final == target_labels).double().mean().item()

    @tladapt.hookimpl
    def tladapt_fit_end(self, trainer, results):
        """``results["jda"]``: the options, the objective and the pseudo-label change per iteration."""
        results["jda"] = {**vars(self.options), "objective": self.fit.objective.tolist(),
                          "pseudo_label_change": self._changes()}

    @tladapt.hookimpl
    def tladapt_state_dict(self, trainer):
        """The fitted projection and the pseudo-labels of every iteration."""
        return {"projection": self.fit.projection, "pseudo_labels": self.fit.pseudo_labels}

    @tladapt.hookimpl
    def tladapt_load_state_dict(self, trainer, state):
        """Check that the recomputed fit is the saved one (the domains are rebuilt from it).

        Raises:
            RuntimeError: when they differ (other data, options or numerical library).
        """
        same = torch.equal(state["projection"].to(self.fit.projection.device), self.fit.projection) and \
            torch.equal(state["pseudo_labels"].to(self.fit.pseudo_labels.device), self.fit.pseudo_labels)
        if not same:
            raise RuntimeError("plugins.jda: the subspace recomputed for the resumed run differs from the saved one "
                               "(different data, options or linear-algebra library): the run cannot resume exactly")
