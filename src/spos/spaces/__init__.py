"""Built-in search spaces: one pair of modules per family.

``spos.spaces.<family>`` is torch-free (space factories registered with
:func:`spos.space.register_space`, arch parsers, canonical forms, and where the family's
models live); ``spos.spaces.<family>_model`` holds the supernet and the child network and is
imported the first time a model of the family is built (:func:`spos.supernet.get_family`).
Importing this package registers the built-in spaces without importing torch.
"""

from spos.spaces import nb201, resnet_quant, shufflenet, shufflenet_channel

__all__ = ["nb201", "resnet_quant", "shufflenet", "shufflenet_channel"]
