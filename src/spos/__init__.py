"""spos: Single Path One-Shot NAS with uniform sampling (Guo et al., ECCV 2020).

Public, torch-free entry points are re-exported here; model code lives in
:mod:`spos.supernet` and :mod:`spos.childnet`.
"""

from spos.arch import Arch
from spos.errors import SposError
from spos.space import Choice, SearchSpace, create_space, list_spaces, make_rng, register_space

__all__ = [
    "Arch",
    "Choice",
    "SearchSpace",
    "SposError",
    "create_space",
    "list_spaces",
    "make_rng",
    "register_space",
]
__version__ = "0.1.0"
