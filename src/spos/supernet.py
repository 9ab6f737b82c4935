"""The supernet base class and the model-family registry (SPEC sections 2, 3).

A :class:`Supernet` holds every candidate of every choice and runs one path per call:
``supernet(x, arch)``. The architecture is an argument, never hidden state, so the same module
serves training (a fresh uniform path per step), BN recalibration and evaluation of search
candidates, and several threads or ranks can use it without coordinating.

Each search-space *family* (``SearchSpace.family``) registers how to build its supernet and its
standalone child network with :func:`register_family`; :func:`build_supernet` and
:func:`spos.childnet.build_child` dispatch on it. A family's torch-free module records where
its models live (:func:`spos.space.register_model_module`), and that module is imported the
first time the family is looked up; a plugin may also call :func:`register_family` directly.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from spos.arch import Arch
from spos.errors import ArchError, ConfigError
from spos.space import SearchSpace, model_modules, resolve_family

__all__ = [
    "Family",
    "Supernet",
    "build_supernet",
    "get_family",
    "list_families",
    "register_family",
]

class Supernet(nn.Module, abc.ABC):
    """Base class of every supernet: all candidates, one path per call.

    Subclasses build their modules in ``__init__``, implement :meth:`forward` and
    :meth:`path_modules`; :meth:`path_parameters` and :meth:`path_batchnorms` follow.

    Attributes:
        space: The search space this supernet implements.
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, e.g. ``(3, 224, 224)`` (from the space layout)."""
        layout = self.space.layout
        return (int(layout["in_channels"]), int(layout["input_size"]), int(layout["input_size"]))

    @abc.abstractmethod
    def forward(self, x: Tensor, arch: Arch) -> Tensor:
        """Run the path ``arch`` on the batch ``x`` and return the logits."""

    @abc.abstractmethod
    def path_modules(self, arch: Arch) -> list[tuple[str, nn.Module]]:
        """The modules the path ``arch`` runs, in forward order, each with its layer key.

        The key is the choice label for a candidate module and a fixed name (``"stem"``,
        ``"head"``) for modules every path shares. Cost tables
        (:class:`spos.cost.CostModel`) and weight inheritance
        (:func:`spos.childnet.inherit_weights`) are built from this list.
        """

    def layer_choices(self, key: str) -> tuple[str, ...]:
        """The choice labels whose values decide what the path module ``key`` computes.

        The default: a module keyed by a choice label depends on that choice alone, shared
        modules (``"stem"``, ``"head"``) on none. A supernet whose module reads several
        choices (a block's type and its width) overrides this; :class:`spos.cost.CostModel`
        then tabulates that module per combination of their values.
        """
        return (key,) if key in self.space.labels else ()

    def standalone_path(self, arch: Arch) -> list[tuple[str, nn.Module]]:
        """Modules holding exactly the weights of the path ``arch``, runnable on their own.

        Same keys and order as :meth:`path_modules`, and each module takes the same tensor
        inputs. The default is :meth:`path_modules` itself; a supernet that slices a wider
        weight per path returns plain copies at the chosen widths, so cost counting and
        :func:`spos.childnet.inherit_weights` see the child's shapes. Copies share no storage
        with the supernet: use :meth:`path_modules` for training and BN recalibration.
        """
        return self.path_modules(arch)

    def check_arch(self, arch: Arch) -> None:
        """Cheap check that ``arch`` names this supernet's space (no per-value validation)."""
        if arch.space != self.space.name or arch.version != self.space.version:
            raise ArchError(
                f"architecture is for space {arch.space!r} v{arch.version} but this supernet "
                f"implements {self.space.name!r} v{self.space.version}"
            )
        if len(arch.values) != len(self.space.choices):
            raise ArchError(
                f"architecture has {len(arch.values)} values; space {self.space.name!r} "
                f"has {len(self.space.choices)} choices"
            )

    def path_parameters(self, arch: Arch) -> list[nn.Parameter]:
        """Every parameter the path ``arch`` uses (shared stem/head and chosen candidates).

        After ``loss.backward()`` on ``supernet(x, arch)`` exactly these parameters have a
        gradient; every other one keeps ``grad is None`` (with ``zero_grad(set_to_none=True)``),
        so the optimiser neither decays nor moves them (SPEC section 3).
        """
        seen: set[int] = set()
        parameters: list[nn.Parameter] = []
        for _, module in self.path_modules(arch):
            for parameter in module.parameters():
                if id(parameter) not in seen:
                    seen.add(id(parameter))
                    parameters.append(parameter)
        return parameters

    def path_batchnorms(self, arch: Arch) -> list[_BatchNorm]:
        """Every BatchNorm on the path ``arch``, in forward order (for BN recalibration)."""
        seen: set[int] = set()
        batchnorms: list[_BatchNorm] = []
        for _, module in self.path_modules(arch):
            for submodule in module.modules():
                if isinstance(submodule, _BatchNorm) and id(submodule) not in seen:
                    seen.add(id(submodule))
                    batchnorms.append(submodule)
        return batchnorms


@dataclass(frozen=True)
class Family:
    """How to build the models of one search-space family.

    Attributes:
        name: The ``SearchSpace.family`` value it serves.
        supernet: ``supernet(space) -> Supernet``.
        child: ``child(space, arch) -> nn.Module``: the standalone network of one path, with
            affine BatchNorm, whose stateful layers come in the same order as
            ``Supernet.path_modules(arch)`` (so weights can be inherited).
    """

    name: str
    supernet: Callable[[SearchSpace], Supernet]
    child: Callable[[SearchSpace, Arch], nn.Module]


_FAMILIES: dict[str, Family] = {}


def register_family(
    name: str,
    *,
    supernet: Callable[[SearchSpace], Supernet],
    child: Callable[[SearchSpace, Arch], nn.Module],
) -> Family:
    """Register the supernet and child builders of the family ``name``.

    Args:
        name: The ``SearchSpace.family`` value the builders serve.
        supernet: ``supernet(space) -> Supernet``.
        child: ``child(space, arch) -> nn.Module``.

    Returns:
        The registered :class:`Family`.

    Raises:
        ConfigError: If different builders are already registered under ``name``.
    """
    family = Family(name, supernet, child)
    if name in _FAMILIES and _FAMILIES[name] != family:
        raise ConfigError(f"a model family named {name!r} is already registered")
    _FAMILIES[name] = family
    return family


def list_families() -> list[str]:
    """Names of every registered family, sorted (importing every recorded model module)."""
    for module in sorted(set(model_modules().values())):
        importlib.import_module(module)
    return sorted(_FAMILIES)


def get_family(name: str) -> Family:
    """The registered family ``name`` (or the family it is an alias of).

    The first lookup of a family imports the model module its torch-free module recorded
    (:func:`spos.space.register_model_module`).

    Raises:
        ConfigError: If no family of that name is registered (the message lists them).
    """
    name = resolve_family(name)
    module = model_modules().get(name)
    if name not in _FAMILIES and module is not None:
        importlib.import_module(module)
    if name not in _FAMILIES:
        list_families()
        raise ConfigError(
            f"unknown model family {name!r}; known families: {sorted(_FAMILIES)} "
            "(register one with spos.supernet.register_family)"
        )
    return _FAMILIES[name]


def build_supernet(space: SearchSpace) -> Supernet:
    """Build the supernet of ``space`` through its family's builder.

    Raises:
        ConfigError: If the space's family is unknown or its layout is invalid.
    """
    return get_family(space.family).supernet(space)
