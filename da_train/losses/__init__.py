"""Losses and layers shared by the methods (one place; methods import from here).

- :mod:`.adversarial`: gradient reversal, the sigmoid ramp;
- :mod:`.target`: entropy and confident pseudo-labels on unlabelled target predictions;
- :mod:`.mmd`: maximum mean discrepancy (DDC / DAN).

Further modules (one per family of losses) sit beside these and are imported directly.
"""

from .adversarial import grad_reverse, sigmoid_ramp
from .mmd import mmd2
from .target import confident_pseudo_labels, mean_entropy, pseudo_label_loss, pseudo_label_quality

__all__ = ["confident_pseudo_labels", "grad_reverse", "mean_entropy", "mmd2",
           "pseudo_label_loss", "pseudo_label_quality", "sigmoid_ramp"]
