"""ntkcompute: exact infinite-width NTK / NNGP / CNTK kernels and their finite-width check."""

from typing import Any

from .empirical import empirical_kernel
from .errors import InputError
from .families import kernel_family, make_family
from .features import feature_map, features
from .infinite import kernel
from .layers.graph import pack_pattern
from .selection import select
from .spec import Architecture, parse_arch

__all__ = ["Architecture", "InputError", "empirical_kernel", "feature_map", "features", "kernel",
           "kernel_family", "make_family", "pack_pattern", "parse_arch", "select"]
__version__ = "0.1.0"

#: scikit-learn estimators, imported on first use: they need scikit-learn, which
#: ``import ntkcompute`` does not load (and which is not a runtime dependency). Not in
#: ``__all__``, so ``from ntkcompute import *`` stays without it.
_ESTIMATORS = ("NTKClassifier", "NTKRegressor")


def __getattr__(name: str) -> Any:
    if name in _ESTIMATORS:
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
