"""Target entropy minimisation as a tladapt plugin (Grandvalet & Bengio, NIPS 2005).

Run it without installing anything:
    tladapt run -p docs/examples/entropy_min.py --enable entropy_min --set plugins.entropy_min.weight=0.1
"""

from dataclasses import dataclass

import tladapt
from tladapt.losses import entropy


class EntropyMin:
    """Pushes the classifier toward confident predictions on target samples."""

    @dataclass
    class Options:
        weight: float = tladapt.option(0.1, "coefficient of the target entropy term")

    def __init__(self, options: Options):
        self.options = options

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, out):
        # out.logits_t: (batch, classes) logits of the target batch, already computed.
        h = entropy(out.logits_t)
        trainer.log("entropy_min/target_entropy", h)
        return {"target_entropy": tladapt.Term(h, self.options.weight)}
