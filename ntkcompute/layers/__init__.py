"""One module per layer family, each layer registered once (:mod:`.registry`).

Importing this package registers every family, in the order of the known layer types.
"""

# isort: off
from . import linear, pooling, activations, normalization, attention, branching  # noqa: F401
from . import dropout, convolutions, resize, dot, graph  # noqa: F401
# isort: on
from .registry import (
    LayerRule,
    register,
    registered,
    rule_of,
    rule_of_class,
    rule_of_tag,
    rules,
)

__all__ = ["LayerRule", "register", "registered", "rule_of", "rule_of_class", "rule_of_tag",
           "rules"]
