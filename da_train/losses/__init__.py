"""Losses and layers shared by the methods (one place; methods import from here).

- :mod:`.adversarial`: gradient reversal, the sigmoid ramp, the domain discriminator;
- :mod:`.target`: entropy (the one function; methods, regularisers and validators use it)
  and confident pseudo-labels on unlabelled target predictions;
- :mod:`.mmd`: maximum mean discrepancy (DDC / DAN).

Further modules (one per family of losses) sit beside these and are imported directly.
"""

from .adversarial import DomainDiscriminator, grad_reverse, sigmoid_ramp
from .mmd import mmd2
from .target import (
    confident_pseudo_labels,
    entropy,
    mean_entropy,
    pseudo_label_loss,
    pseudo_label_quality,
)

__all__ = ["DomainDiscriminator", "confident_pseudo_labels", "entropy", "grad_reverse",
           "mean_entropy", "mmd2",
           "pseudo_label_loss", "pseudo_label_quality", "sigmoid_ramp"]
