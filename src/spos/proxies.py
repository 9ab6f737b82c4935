"""Zero-cost proxies: scores of an architecture computed at initialisation (SPEC section 4).

The paper scores a candidate by its supernet accuracy alone; weight sharing biases that score
towards low-complexity paths (Ning et al., NeurIPS 2021). Zero-cost proxies are a second,
independent signal: each architecture's **own standalone network**
(:func:`spos.childnet.build_child`), freshly initialised, scored on **one batch** of real
training images without any training (Abdelfattah et al., *Zero-Cost Proxies for Lightweight
NAS*, ICLR 2021). Ning et al. found that proxies degrade when computed on trained supernet
weights, so they are computed here at initialisation only. :mod:`spos.estimator` combines them
with the supernet score and cost metrics by rank aggregation.

Proxies live in one registry (:func:`register_proxy`, :func:`list_proxies`,
:func:`get_proxy`), and :func:`compute_proxies` is the entry point:

* ``synflow``, ``naswot``, ``jacob_cov``, ``grad_norm``, ``snip`` score a network (higher is
  better for all of them); each is also a plain function of ``(network, images, labels)``
  that never modifies the network it is given;
* ``params`` and ``flops`` read the space's cost table (:class:`spos.cost.CostModel`), so they
  cost a lookup.

Reproducibility: the network of an architecture is initialised from a seed derived from
``(seed, arch.key)`` (:func:`proxy_seed`) under a forked RNG, so a value depends only on the
seed, the architecture and the batch: not on the order of the architectures, on which other
proxies were computed, or on the global RNG (which is left untouched). Dropout is switched off
so a score is a function of the weights and the batch; BatchNorm uses batch statistics (train
mode), as in the zero-cost reference implementation, except where a proxy says otherwise.

Values are finite floats, or ``-inf`` for a degenerate network whose output ignores its input
(e.g. a NAS-Bench-201 cell with every edge ``none``): such a network ranks below every other.
NaN is never returned.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from spos.arch import Arch
from spos.childnet import build_child
from spos.errors import SposError
from spos.space import SearchSpace

if TYPE_CHECKING:
    from spos.cost import CostModel

__all__ = [
    "JACOB_COV_EPSILON",
    "Proxy",
    "ProxyError",
    "build_proxy_network",
    "compute_proxies",
    "get_proxy",
    "grad_norm",
    "jacob_cov",
    "list_proxies",
    "naswot",
    "proxy_seed",
    "register_proxy",
    "snip",
    "synflow",
]

#: The ``k`` that regularises the eigenvalues in ``jacob_cov`` (Mellor et al.'s code: 1e-5).
JACOB_COV_EPSILON = 1e-5

ProxyKind = Literal["network", "cost"]
NetworkProxy = Callable[[nn.Module, Tensor, Tensor], float]
CostProxy = Callable[["CostModel", Arch], float]


class ProxyError(SposError, ValueError):
    """A proxy cannot be computed for this network, batch or name (the message says why)."""


@dataclass(frozen=True)
class Proxy:
    """One registered proxy.

    Attributes:
        name: Registry name (``"synflow"``).
        kind: ``"network"``: ``fn(network, images, labels)`` scores an initialised network;
            ``"cost"``: ``fn(costs, arch)`` reads the cost table.
        fn: The scoring function (higher is better).
    """

    name: str
    kind: ProxyKind
    fn: Callable[..., float]

    @property
    def doc(self) -> str:
        """First line of the function's docstring."""
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


_REGISTRY: dict[str, Proxy] = {}


def register_proxy(name: str, *, kind: ProxyKind = "network") -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Decorator registering a proxy under ``name``.

    A ``"network"`` proxy is ``fn(network, images, labels) -> float`` and must leave
    ``network`` unchanged (work on a copy); a ``"cost"`` proxy is ``fn(costs, arch) -> float``.

    Raises:
        ValueError: ``name`` is already registered or ``kind`` is unknown.
    """
    if kind not in ("network", "cost"):
        raise ValueError(f"register_proxy kind must be 'network' or 'cost', got {kind!r}")

    def decorator(fn: Callable[..., float]) -> Callable[..., float]:
        if name in _REGISTRY:
            raise ValueError(f"a proxy named {name!r} is already registered")
        _REGISTRY[name] = Proxy(name, kind, fn)
        return fn

    return decorator


def list_proxies() -> list[str]:
    """Names of the registered proxies, sorted."""
    return sorted(_REGISTRY)


def get_proxy(name: str) -> Proxy:
    """The registered proxy ``name``.

    Raises:
        ProxyError: No proxy has that name (the registered ones are listed).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ProxyError(f"unknown proxy {name!r}; registered proxies: {list_proxies()}") from None


# --------------------------------------------------------------------------------------------
# Helpers shared by the network proxies
# --------------------------------------------------------------------------------------------


def _check_batch(name: str, images: Tensor, labels: Tensor | None = None, *, minimum: int = 1) -> None:
    if not isinstance(images, Tensor) or images.dim() < 2 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ProxyError(f"proxy {name!r}: images must be a float tensor (N, ...), got {shape}")
    if len(images) < minimum:
        raise ProxyError(f"proxy {name!r} needs a batch of at least {minimum} images, got {len(images)}")
    if labels is not None and (labels.dim() != 1 or len(labels) != len(images)):
        raise ProxyError(
            f"proxy {name!r}: labels must have shape ({len(images)},) to match images, "
            f"got {tuple(labels.shape)}"
        )


def _private_copy(network: nn.Module, *, train: bool) -> nn.Module:
    """A copy to score (the caller's network is never touched): BN in train mode if ``train``,
    dropout always off, gradients cleared."""
    # Share plain (non-module, non-tensor) attributes such as a child's ``space`` and ``arch``:
    # they are immutable descriptions, and a SearchSpace's frozen layout cannot be deep-copied.
    memo: dict[int, object] = {}
    for module in network.modules():
        for value in vars(module).values():
            if not isinstance(value, (nn.Module, Tensor, dict, list, set)):
                memo[id(value)] = value
    model = copy.deepcopy(network, memo)
    model.train(train)
    for module in model.modules():
        if isinstance(module, _DropoutNd):
            module.eval()
    for parameter in model.parameters():
        parameter.grad = None
        parameter.requires_grad_(True)
    return model


def _weighted_layers(model: nn.Module) -> list[nn.Module]:
    """Convolution and linear layers: the ones the zero-cost reference scores per weight."""
    return [m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]


def _sum_over_weights(model: nn.Module, per_layer: Callable[[Tensor, Tensor], Tensor]) -> float:
    total = 0.0
    for layer in _weighted_layers(model):
        grad = layer.weight.grad
        if grad is not None:
            total += float(per_layer(layer.weight.detach(), grad.detach()))
    return total


def _finite_or_raise(name: str, value: float) -> float:
    if math.isnan(value) or value == math.inf:
        raise ProxyError(
            f"proxy {name!r} gave {value} for this network (overflow or NaN in its forward "
            "pass); check the network's initialisation or use a smaller input"
        )
    return value


# --------------------------------------------------------------------------------------------
# The proxies
# --------------------------------------------------------------------------------------------


@register_proxy("synflow")
def synflow(network: nn.Module, images: Tensor, labels: Tensor | None = None) -> float:
    """SynFlow: synaptic flow through the network with absolute weights and an input of ones.

    Tanaka, Kunin, Yamins, Ganguli, *Pruning neural networks without any data by iteratively
    conserving synaptic flow* (NeurIPS 2020); used as a NAS proxy by Abdelfattah et al.
    (ICLR 2021). Every parameter is replaced by its absolute value, BatchNorm is bypassed (its
    output is its input, the reference's ``bn=False``), and the network runs in float64 on one
    input of ones shaped like ``images[0]``; with ``R = sum(network(1))`` the score is
    ``sum over conv/linear weights |w * dR/dw|``. Float64 keeps deep networks from overflowing
    (a non-finite result raises :class:`ProxyError`). Labels and image values are unused.
    """
    _check_batch("synflow", images)
    # Train mode as in the reference (quantisers keep their straight-through gradient); BN is
    # bypassed below and set to eval only so a 1x1 map at batch 1 does not trip its check.
    model = _private_copy(network, train=True).double()
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    bypass = [
        m.register_forward_hook(lambda _m, args, _out: args[0])
        for m in model.modules()
        if isinstance(m, _BatchNorm)
    ]
    try:
        ones = torch.ones((1, *images.shape[1:]), dtype=torch.float64, device=images.device)
        model(ones).sum().backward()
    finally:
        for handle in bypass:
            handle.remove()
    value = _sum_over_weights(model, lambda w, g: (w * g).abs().sum())
    return _finite_or_raise("synflow", value)


@register_proxy("grad_norm")
def grad_norm(network: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Gradient norm: sum over conv/linear layers of ``||dL/dW||_2`` at initialisation.

    Abdelfattah, Mehrotra, Dudziak, Lane, *Zero-Cost Proxies for Lightweight NAS* (ICLR 2021),
    ``grad_norm``: ``L`` is the mean cross-entropy of ``images`` against ``labels`` (BN in
    train mode), each layer contributes the Frobenius norm of its weight gradient.
    """
    _check_batch("grad_norm", images, labels)
    model = _private_copy(network, train=True)
    F.cross_entropy(model(images), labels).backward()
    return _finite_or_raise("grad_norm", _sum_over_weights(model, lambda _w, g: g.norm()))


@register_proxy("snip")
def snip(network: nn.Module, images: Tensor, labels: Tensor) -> float:
    """SNIP saliency: ``sum over conv/linear weights |w * dL/dw|`` at initialisation.

    Lee, Ajanthan, Torr, *SNIP: Single-shot Network Pruning based on Connection Sensitivity*
    (ICLR 2019); summed over the network as a NAS proxy by Abdelfattah et al. (ICLR 2021).
    The reference differentiates a weight mask of ones, whose gradient is ``w * dL/dw``; this
    computes the same product directly. ``L``: mean cross-entropy, BN in train mode.
    """
    _check_batch("snip", images, labels)
    model = _private_copy(network, train=True)
    F.cross_entropy(model(images), labels).backward()
    return _finite_or_raise("snip", _sum_over_weights(model, lambda w, g: (w * g).abs().sum()))


@register_proxy("naswot")
def naswot(network: nn.Module, images: Tensor, labels: Tensor | None = None) -> float:
    """NASWOT: log-determinant of the kernel of binary ReLU activation codes.

    Mellor, Turner, Storkey, Crowley, *Neural Architecture Search without Training* (ICML
    2021). For every ``nn.ReLU`` call, each image's input to it gives a binary code
    ``c = (x > 0)``; ``K[i, j]`` counts, over all ReLU units, where images ``i`` and ``j`` agree
    (``K += c c^T + (1 - c)(1 - c)^T``). The score is ``log |det K|`` (float64), ``-inf`` when
    ``K`` is singular (e.g. two images with identical codes everywhere). The input is read
    before the ReLU runs, so in-place ReLUs are handled. Needs at least 2 images; labels are
    unused.

    Raises:
        ProxyError: The network has no ``nn.ReLU`` module (the proxy does not apply).
    """
    _check_batch("naswot", images, minimum=2)
    model = _private_copy(network, train=True)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ProxyError(
            "proxy 'naswot' needs nn.ReLU modules (it reads their binary activation codes), "
            f"but this {type(network).__name__} has none; drop 'naswot' from names"
        )
    count = len(images)
    kernel = torch.zeros((count, count), dtype=torch.float64, device=images.device)

    def accumulate(_module: nn.Module, args: tuple) -> None:
        codes = (args[0].detach().reshape(count, -1) > 0).to(torch.float64)
        kernel.add_(codes @ codes.T).add_((1.0 - codes) @ (1.0 - codes).T)

    hooks = [m.register_forward_pre_hook(accumulate) for m in relus]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in hooks:
            handle.remove()
    sign, logdet = torch.linalg.slogdet(kernel.cpu())
    if float(sign) == 0.0:
        return -math.inf
    return _finite_or_raise("naswot", float(logdet))


@register_proxy("jacob_cov")
def jacob_cov(network: nn.Module, images: Tensor, labels: Tensor | None = None) -> float:
    """Jacobian covariance: how decorrelated the input gradients of different images are.

    Mellor, Turner, Storkey, Crowley, *Neural Architecture Search without Training* (arXiv
    2006.04647v1, the first version of the NASWOT paper); as implemented by Abdelfattah et al.
    (ICLR 2021). With ``J[i] = d(sum of network(images)[i]) / d images[i]`` flattened (BN in
    train mode) and ``C`` the correlation matrix of the rows of ``J`` with eigenvalues ``v``,
    the score is ``-sum(log(v + k) + 1 / (v + k))``, ``k`` = :data:`JACOB_COV_EPSILON`.
    ``-inf`` when an image's gradient is constant (the output ignores that input). Needs at
    least 2 images; labels are unused.
    """
    _check_batch("jacob_cov", images, minimum=2)
    model = _private_copy(network, train=True)
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # only the input gradient is needed
    inputs = images.detach().clone().requires_grad_(True)
    output = model(inputs)
    if not output.requires_grad:  # the output does not depend on the input at all
        return -math.inf
    output.backward(torch.ones_like(output))
    assert inputs.grad is not None
    jacobian = inputs.grad.detach().reshape(len(images), -1).to(torch.float64).cpu().numpy()
    if np.any(jacobian.std(axis=1) == 0):
        return -math.inf
    correlation = np.corrcoef(jacobian)
    eigenvalues = np.linalg.eigvalsh(correlation)
    shifted = eigenvalues + JACOB_COV_EPSILON
    if np.any(shifted <= 0):  # round-off below -k: treat as singular
        return -math.inf
    return _finite_or_raise("jacob_cov", float(-np.sum(np.log(shifted) + 1.0 / shifted)))


@register_proxy("params", kind="cost")
def params(costs: CostModel, arch: Arch) -> float:
    """Parameters of the conv and linear layers (the cost table's ``params`` convention)."""
    return float(costs.cost(arch, "params"))


@register_proxy("flops", kind="cost")
def flops(costs: CostModel, arch: Arch) -> float:
    """Multiply-accumulates of one forward pass at batch 1 (the cost table's ``flops``)."""
    return float(costs.cost(arch, "flops"))


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def proxy_seed(seed: int, arch: Arch) -> int:
    """The initialisation seed of ``arch``'s network: a hash of ``(seed, arch.key)``.

    Depends on nothing else, so a value does not change with the order of the architectures.
    """
    digest = hashlib.sha256(f"{int(seed)}:proxy-init:{arch.key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextmanager
def _seeded(seed: int):
    # Model init draws from the global CPU RNG; fork it so the caller's stream is unchanged.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_proxy_network(space: SearchSpace, arch: Arch, *, seed: int) -> nn.Module:
    """``build_child(space, arch)`` initialised from :func:`proxy_seed` ``(seed, arch)``."""
    with _seeded(proxy_seed(seed, arch)):
        return build_child(space, arch)


def compute_proxies(
    space: SearchSpace,
    archs: Sequence[Arch],
    names: Sequence[str] | None = None,
    *,
    images: Tensor,
    labels: Tensor,
    seed: int = 0,
    device: torch.device | str = "cpu",
    costs: CostModel | None = None,
) -> list[dict[str, float]]:
    """Every proxy in ``names`` for every architecture, at initialisation.

    Args:
        space: The search space of ``archs``.
        archs: Architectures to score.
        names: Proxies to compute (default: every registered one, :func:`list_proxies`).
        images: One batch of training images, normalised as for training, ``(N, C, H, W)``.
        labels: Their class indices, ``(N,)``.
        seed: Initialisation seed; each network's own seed is ``proxy_seed(seed, arch)``.
        device: Where the networks run.
        costs: The space's cost table for ``params`` / ``flops`` (built from ``space`` when
            needed and not given).

    Returns:
        One ``{name: value}`` per architecture, in the order of ``archs``.

    Raises:
        ProxyError: An unknown name, a malformed batch, a proxy that does not apply to the
            space's networks, or ``costs`` of another space.
        ArchError: An architecture is not of ``space``.
    """
    names = list_proxies() if names is None else list(names)
    if not names:
        raise ProxyError("names is empty; give at least one proxy name")
    if len(set(names)) != len(names):
        raise ProxyError(f"names repeats a proxy: {names}")
    proxies = [get_proxy(name) for name in names]
    network_proxies = [p for p in proxies if p.kind == "network"]
    if network_proxies:
        _check_batch(network_proxies[0].name, images, labels)
        channels = space.layout.get("in_channels")
        if isinstance(channels, int) and images.shape[1] != channels:
            raise ProxyError(
                f"images have {images.shape[1]} channels but space {space.name!r} takes "
                f"{channels}; pass a batch of that space's images"
            )
        images = images.to(device)
        labels = labels.to(device)
    if any(p.kind == "cost" for p in proxies):
        from spos.cost import CostModel

        if costs is None:
            costs = CostModel.from_space(space)
        else:
            try:
                costs.check_space(space)
            except SposError as exc:
                raise ProxyError(f"costs: {exc}") from None
    results: list[dict[str, float]] = []
    for arch in archs:
        values: dict[str, float] = {}
        network = build_proxy_network(space, arch, seed=seed).to(device) if network_proxies else None
        for proxy in proxies:
            if proxy.kind == "cost":
                values[proxy.name] = float(proxy.fn(costs, arch))
            else:
                values[proxy.name] = float(proxy.fn(network, images, labels))
            if math.isnan(values[proxy.name]):
                raise ProxyError(f"proxy {proxy.name!r} gave NaN for {arch.short()}")
        results.append(values)
    return results
