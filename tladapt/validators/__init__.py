"""Label-free validators: scores of a model computed without target labels, recorded at every
evaluation point as ``validator/<name>`` so that model selection can happen after the fact
(:mod:`tladapt.selection`).

A validator is a :class:`Validator` object (name, direction, ``__call__`` on one
:class:`EvalOutputs` bundle). Plugins contribute validators through the hook
``tladapt_validators``; the built-in ones come from :class:`CoreValidators`, a plugin that
every plugin manager registers. See docs/model-selection.md.
"""

from tladapt.validators.base import (TAG, Contributed, Direction, RunValidators, Validator, available_validators,
                                     better, choose_validators, tag_direction)
from tladapt.validators.core import CORE_VALIDATORS, CoreValidators
from tladapt.validators.outputs import EvalOutputs, Subsamples, collect_outputs

__all__ = ["TAG", "Contributed", "Direction", "RunValidators", "Validator", "available_validators", "better",
           "choose_validators", "tag_direction", "CORE_VALIDATORS", "CoreValidators", "EvalOutputs", "Subsamples",
           "collect_outputs"]
