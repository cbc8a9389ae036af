"""ntkcompute: exact infinite-width NTK / NNGP / CNTK kernels and their finite-width check."""

from .empirical import empirical_kernel
from .errors import InputError
from .features import feature_map, features
from .infinite import kernel
from .spec import Architecture, parse_arch

__all__ = ["Architecture", "InputError", "empirical_kernel", "feature_map", "features", "kernel",
           "parse_arch"]
__version__ = "0.1.0"
