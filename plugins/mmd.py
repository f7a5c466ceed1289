"""MMD feature alignment: DAN (multi-kernel MMD) and JAN (joint MMD) as one plugin.

* Long, Cao, Wang & Jordan, "Learning Transferable Features with Deep Adaptation
  Networks", ICML 2015 (DAN): the squared multi-kernel maximum mean discrepancy
  between the source and target representations of a layer, added to the source
  loss. ``layer = "features"`` (the backbone output) with the default multi-kernel
  is DAN on the bottleneck layer.
* Long, Zhu, Wang & Jordan, "Deep Transfer Learning with Joint Adaptation
  Networks", ICML 2017 (JAN): ``layer = "joint"`` is the joint MMD over the
  features and the softmax outputs, with a product kernel.
* Gretton, Borgwardt, Rasch, Schölkopf & Smola, "A Kernel Two-Sample Test",
  JMLR 2012: the biased (V-), unbiased (U-) and linear-time estimators and the
  median heuristic.

All the math is :mod:`tladapt.discrepancy` (:func:`~tladapt.discrepancy.mmd`,
:func:`~tladapt.discrepancy.jmmd`, :func:`~tladapt.discrepancy.kernel_bandwidths`);
this module only wires it to the trainer. Kernel convention, as there:
``k(a, b) = (1/K) sum_k exp(-||a - b||^2 / (2 sigma2_k))`` and every *bandwidth*
is ``sigma2`` (sigma squared), with ``sigma2_k = base * scales[k]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

import tladapt
from tladapt.config import ConfigError
from tladapt.discrepancy import DAN_SCALES, jmmd, kernel_bandwidths, mmd
from tladapt.losses import grl_coefficient

__all__ = ["MMD", "JAN_SOFTMAX_SIGMA2"]

#: sigma^2 of JAN's single Gaussian kernel on the softmax outputs (sigma = 0.92 in
#: the JAN reference code; Long et al., ICML 2017).
JAN_SOFTMAX_SIGMA2: float = 0.92**2



class MMD:
    """Adds the squared (joint) MMD between the domains' representations as the term ``mmd``.

    Per step, on the trainer's shared forward pass (``Outputs``), with ``b`` the
    per-domain batch size, ``D = trainer.feature_dim`` and ``C = trainer.num_classes``:

    * ``layer = "features"``: MK-MMD² of ``features_s`` vs ``features_t``, both
      ``(b, D)`` float32 (DAN, Long et al., ICML 2015);
    * ``layer = "logits"``: MK-MMD² of the classifier logits, ``(b, C)``;
    * ``layer = "joint"``: JMMD² (JAN, Long et al., ICML 2017) of the pairs
      ``(features, softmax(logits))``: product of a kernel on the features
      (``bandwidth``, ``scales``) and one on the softmax outputs
      (``joint_bandwidth``, ``joint_scales``).

    The term's value is exactly ``tladapt.discrepancy.mmd(source, target,
    bandwidth=..., scales=..., estimator=...)`` (or ``jmmd``), a 0-dim float32
    tensor, differentiable in both batches with the data-driven bandwidth held
    constant; the trainer adds ``λ * value`` to the loss and logs the value
    (MMD²) as ``loss/mmd``. ``λ = weight`` (``schedule = "constant"``, DAN), or
    ``λ = weight * (2 / (1 + exp(-gamma p)) - 1)`` at training progress ``p``
    (``schedule = "progressive"``: JAN's ramp from 0, after DANN's GRL schedule, which
    keeps the alignment from collapsing features before the classifier has learnt
    anything; logged as ``mmd/weight``). The plugin also logs ``mmd/sigma2``, the base
    bandwidth ``sigma2`` in use (the median/mean of the pooled squared distances,
    or the fixed value; the kernels are ``base * scales``), and for
    ``layer = "joint"`` ``mmd/sigma2_softmax``; all as device tensors through
    ``trainer.log`` (no host read of its own).

    Raises:
        ConfigError: at construction, for a negative ``weight``, a non-positive
            ``gamma``, a fixed bandwidth or a scale that is not finite and > 0
            (``layer``, ``estimator``, ``schedule`` and the bandwidth rules are
            ``Literal`` options, rejected by the config validator, naming
            ``plugins.mmd.<key>``); at setup, for ``trainer.batch_size < 2`` with the
            ``unbiased`` or ``linear`` estimator.
    """

    capture_safe = True  # per-step work: device ops of static shapes (trainer.compile = "cudagraph")

    @dataclass
    class Options:
        """``[plugins.mmd]`` options."""

        weight: float = tladapt.option(1.0, "coefficient λ of the MMD² term in the total loss (DAN/JAN: 1)", ge=0)
        schedule: Literal["constant", "progressive"] = tladapt.option(
            "constant", "constant λ (DAN), or λ × (2/(1+exp(-γ p)) - 1) ramped from 0 over training "
                        "progress p (JAN, after DANN)")
        gamma: float = tladapt.option(10.0, "schedule='progressive': steepness γ of the ramp (JAN: 10)", gt=0)
        layer: Literal["features", "logits", "joint"] = tladapt.option(
            "features", "what is aligned: backbone features (DAN), logits, or joint features+softmax (JAN)")
        estimator: Literal["biased", "unbiased", "linear"] = tladapt.option(
            "biased", "MMD² estimator (Gretton et al. 2012): V-statistic, U-statistic or linear-time")
        bandwidth: Literal["median", "mean"] | float = tladapt.option(
            "median", "base σ² of the Gaussian kernels: 'median' or 'mean' of the pooled squared "
                      "distances of the batch, or a fixed σ² > 0", gt=0)
        scales: list[float] = tladapt.option(
            [], "kernel σ² = base × scale, one kernel each; [] = DAN's (0.25, 0.5, 1, 2, 4) for "
                "median/mean, (1,) for a fixed σ²", gt=0)
        joint_bandwidth: Literal["median", "mean"] | float = tladapt.option(
            JAN_SOFTMAX_SIGMA2, "layer='joint': σ² rule of the kernel on the softmax outputs "
                                "(JAN: one kernel, σ = 0.92, σ² = 0.8464)", gt=0)
        joint_scales: list[float] = tladapt.option(
            [], "layer='joint': scales of the softmax kernel; [] = default as for `scales`", gt=0)

    def __init__(self, options: Options):
        self.options = options

    @staticmethod
    def _scales(value: list[float]) -> tuple[float, ...] | None:
        return tuple(value) if value else None

    @tladapt.hookimpl
    def tladapt_check(self, config):
        """Check, before any run, that the batch size suits the estimator.

        Raises:
            ConfigError: ``unbiased``/``linear`` estimator with ``trainer.batch_size < 2``.
        """
        o = self.options
        if o.estimator in ("unbiased", "linear") and config.trainer.batch_size < 2:
            raise ConfigError(
                f"plugins.mmd.estimator = {o.estimator!r} needs at least 2 samples per domain, "
                f"but trainer.batch_size = {config.trainer.batch_size}"
            )

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, out):
        """``{"mmd": Term(MMD², λ)}`` for this step's :class:`~tladapt.trainer.Outputs`.

        The value is a 0-dim float32 tensor with gradient into the backbone (and the head
        for ``layer = "logits"``/``"joint"``); ``λ`` is a float. Logs ``mmd/sigma2`` (and
        ``mmd/sigma2_softmax``, ``mmd/weight``) as device tensors / floats.
        """
        o = self.options
        # The kernels' σ² are computed once (detached, on the device) and passed on as fixed
        # values, so the logged bandwidth is exactly the one used, at no extra cost.
        if o.layer == "joint":
            p_s, p_t = out.logits_s.softmax(1), out.logits_t.softmax(1)
            sigma2 = kernel_bandwidths(out.features_s, out.features_t, o.bandwidth, self._scales(o.scales))
            sigma2_p = kernel_bandwidths(p_s, p_t, o.joint_bandwidth, self._scales(o.joint_scales))
            value = jmmd([out.features_s, p_s], [out.features_t, p_t], bandwidths=[sigma2, sigma2_p],
                         estimator=o.estimator)
            trainer.log("mmd/sigma2", self._base(sigma2, o.bandwidth, o.scales))
            trainer.log("mmd/sigma2_softmax", self._base(sigma2_p, o.joint_bandwidth, o.joint_scales))
        else:
            s, t = (out.features_s, out.features_t) if o.layer == "features" else (out.logits_s, out.logits_t)
            sigma2 = kernel_bandwidths(s, t, o.bandwidth, self._scales(o.scales))
            value = mmd(s, t, bandwidth=sigma2, estimator=o.estimator)
            trainer.log("mmd/sigma2", self._base(sigma2, o.bandwidth, o.scales))
        weight = o.weight
        if o.schedule == "progressive":
            weight = o.weight * grl_coefficient(trainer.progress_tensor, o.gamma)
            trainer.log("mmd/weight", weight)
        return {"mmd": tladapt.Term(value, weight)}

    @staticmethod
    def _base(sigma2: torch.Tensor, rule, scales: list[float]) -> torch.Tensor:
        """The base σ² of the kernels (``sigma2_k = base * scales[k]``): a 0-dim device tensor.
        Default scales are DAN's for a data-driven rule and ``(1,)`` for a fixed σ²."""
        first = scales[0] if scales else (DAN_SCALES[0] if isinstance(rule, str) else 1.0)
        return sigma2[0] / first
