"""Torch-free definitions of every built-in search space, in one namespace (kept for imports).

Each family now has its own pair of modules, ``spos.spaces.<family>`` (spaces, parsers,
canonical forms) and ``spos.spaces.<family>_model`` (supernet and child); this module
re-exports the torch-free halves.
"""

from spos.spaces.nb201 import *  # noqa: F403
from spos.spaces.nb201 import __all__ as _nb201_all
from spos.spaces.resnet_quant import *  # noqa: F403
from spos.spaces.resnet_quant import __all__ as _resnet_quant_all
from spos.spaces.shufflenet import *  # noqa: F403
from spos.spaces.shufflenet import __all__ as _shufflenet_all
from spos.spaces.shufflenet_channel import *  # noqa: F403
from spos.spaces.shufflenet_channel import __all__ as _shufflenet_channel_all

__all__ = [*_shufflenet_all, *_shufflenet_channel_all, *_nb201_all, *_resnet_quant_all]
