"""Search spaces: an ordered set of named choices plus a JSON-able layout (SPEC section 2).

A :class:`SearchSpace` is pure data. It knows its choices (``label -> options``), how to draw,
mutate and cross architectures with an explicit RNG (SPEC section 4), and a ``layout`` dict
that the model builders in :mod:`spos.spaces` read to build the supernet and child networks.
This module imports no torch, so search code and its tests run in milliseconds.

Spaces are created by name through one registry (``create_space`` / ``list_spaces``); the
built-in ones live in :mod:`spos.spaces`, one torch-free module per family, each recording
where its models live (:func:`register_model_module`) so the model module is imported only
when a supernet is built. A user-defined space is a ``SearchSpace`` with
``family="shufflenet_ops"`` (see the README) and needs no registration at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from spos.arch import Arch, Value
from spos.errors import ArchError, ConfigError

__all__ = [
    "register_arch_parser",
    "register_canonical_form",
    "register_model_module",
    "model_modules",
    "resolve_family",
    "Choice",
    "SearchSpace",
    "make_rng",
    "seed_from",
    "register_space",
    "create_space",
    "list_spaces",
    "iter_options",
]


def make_rng(seed: int, purpose: str) -> random.Random:
    """A ``random.Random`` seeded from ``(seed, purpose)``.

    Every random draw in spos takes a generator made here, so two purposes sharing a seed
    (path sampling and search, say) never share a stream, and the same seed gives the same
    result.
    """
    digest = hashlib.sha256(f"{int(seed)}:{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def seed_from(seed: int, purpose: str) -> int:
    """An integer seed (for ``torch.manual_seed``, a ``torch.Generator``) derived from the run
    seed and a purpose, by the same scheme as :func:`make_rng`."""
    return make_rng(seed, purpose).getrandbits(63)


def _freeze(value: Any) -> Any:
    """Deep-freeze a JSON-like value so a space can be hashed and shared safely."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """The JSON-serialisable twin of :func:`_freeze`."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Choice:
    """One decision of a search space.

    Attributes:
        label: Unique name of the decision, e.g. ``"block_03"``.
        options: The candidate values, e.g. ``("shuffle3x3", "xception")`` or ``(2, 4, 8)``.
    """

    label: str
    options: tuple[Value, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))
        if not self.label:
            raise ConfigError("a Choice needs a non-empty label")
        if not self.options:
            raise ConfigError(f"choice {self.label!r} has no options; give at least one")
        if len(set(self.options)) != len(self.options):
            raise ConfigError(f"choice {self.label!r} repeats an option: {list(self.options)}")


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of named choices plus the layout a model builder needs.

    Attributes:
        name: Registry name, recorded in every ``arch.json`` and checkpoint.
        version: Bumped whenever choices or layout change meaning; checkpoints of another
            version are refused.
        family: Which model builder reads the layout (``"shufflenet"``, ``"nb201"``,
            ``"shufflenet_ops"``, ...; the old name ``"sequential"`` is an alias kept for
            saved spaces, see :func:`resolve_family`).
        choices: The decisions, in network order.
        layout: JSON-able description of the fixed skeleton (channels, strides, input size).
    """

    name: str
    version: int
    family: str
    choices: tuple[Choice, ...]
    layout: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))
        object.__setattr__(self, "layout", _freeze(dict(self.layout)))
        labels = [c.label for c in self.choices]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"space {self.name!r} repeats a choice label")
        if not self.choices:
            raise ConfigError(f"space {self.name!r} has no choices")

    # ----------------------------------------------------------------- introspection
    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(c.label for c in self.choices)

    def choice(self, label: str) -> Choice:
        for c in self.choices:
            if c.label == label:
                return c
        raise ArchError(f"space {self.name!r} has no choice labelled {label!r}")

    def size(self) -> int:
        """Number of distinct architectures (product of the option counts)."""
        return math.prod(len(c.options) for c in self.choices)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description; :meth:`from_dict` rebuilds an equal space."""
        return {
            "name": self.name,
            "version": self.version,
            "family": self.family,
            "choices": [{"label": c.label, "options": list(c.options)} for c in self.choices],
            "layout": _thaw(self.layout),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        try:
            return cls(
                name=str(data["name"]),
                version=int(data["version"]),
                family=str(data["family"]),
                choices=tuple(Choice(str(c["label"]), tuple(c["options"])) for c in data["choices"]),
                layout=dict(data.get("layout", {})),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed search-space description (missing or bad {exc})") from None

    def fingerprint(self) -> str:
        """SHA-256 of the canonical description: equal spaces, equal fingerprints."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def with_layout(self, **updates: Any) -> SearchSpace:
        """A copy with some layout keys replaced (input size, classes, channels)."""
        unknown = set(updates) - set(self.layout)
        if unknown:
            raise ConfigError(
                f"space {self.name!r} has no layout key(s) {sorted(unknown)}; "
                f"known keys: {sorted(self.layout)}"
            )
        layout = {**_thaw(self.layout), **updates}
        _load_builtins()
        if self.name in _REGISTRY:  # let the factory rebuild choices that depend on the layout
            return _REGISTRY[self.name](**layout)
        return SearchSpace(self.name, self.version, self.family, self.choices, layout)

    # ----------------------------------------------------------------- architectures
    def arch(self, values: Mapping[str, Value] | Sequence[Value]) -> Arch:
        """Build and validate an architecture from ``{label: value}`` or values in order."""
        if isinstance(values, Mapping):
            missing = [label for label in self.labels if label not in values]
            extra = [label for label in values if label not in self.labels]
            if missing or extra:
                raise ArchError(
                    f"architecture does not match space {self.name!r}: "
                    f"missing labels {missing[:5]}, unknown labels {extra[:5]}"
                )
            ordered = [values[label] for label in self.labels]
        else:
            ordered = list(values)
            if len(ordered) != len(self.choices):
                raise ArchError(
                    f"space {self.name!r} has {len(self.choices)} choices but "
                    f"{len(ordered)} values were given"
                )
        for c, v in zip(self.choices, ordered, strict=True):
            if v not in c.options:
                raise ArchError(
                    f"{v!r} is not an option of {c.label!r} in space {self.name!r}; "
                    f"options are {list(c.options)}"
                )
        return Arch(self.name, self.version, tuple(zip(self.labels, ordered, strict=True)))

    def from_indices(self, indices: Sequence[int]) -> Arch:
        """Build an architecture from option indices (the official tuple form)."""
        indices = list(indices)
        if len(indices) != len(self.choices):
            raise ArchError(
                f"space {self.name!r} has {len(self.choices)} choices but the index "
                f"tuple has {len(indices)} entries"
            )
        values = []
        for c, i in zip(self.choices, indices, strict=True):
            if not isinstance(i, int) or not 0 <= i < len(c.options):
                raise ArchError(
                    f"index {i!r} for {c.label!r} is out of range 0..{len(c.options) - 1}"
                )
            values.append(c.options[i])
        return self.arch(values)

    def indices(self, arch: Arch) -> tuple[int, ...]:
        """Option index of every choice, in order."""
        self.validate(arch)
        return tuple(c.options.index(arch[c.label]) for c in self.choices)

    def validate(self, arch: Arch) -> Arch:
        """Raise :class:`ArchError` unless ``arch`` belongs to this space."""
        if arch.space != self.name or arch.version != self.version:
            raise ArchError(
                f"architecture is for space {arch.space!r} v{arch.version}, not "
                f"{self.name!r} v{self.version}; pass an architecture of this space"
            )
        self.arch(dict(arch.items()))
        return arch

    def parse(self, text: str) -> Arch:
        """Parse an architecture given on a command line.

        Accepts a path to an ``arch.json``, inline JSON (``{"label": value, ...}``), the
        official comma-separated index tuple (``2,1,0,1,...``, brackets optional), the
        comma-separated option values :meth:`Arch.short` prints (``rank/scores.csv`` lists
        architectures that way; text of integers only is read as indices), or a
        family's own text form registered with :func:`register_arch_parser` (e.g. a
        NAS-Bench-201 ``arch_str``).
        """
        from pathlib import Path

        text = text.strip()
        is_file = False
        if not text.startswith("{"):
            try:
                is_file = Path(text).is_file()
            except OSError:  # e.g. a name too long to be a path
                is_file = False
        if text.endswith(".json") or is_file:
            return self.validate(Arch.load(text))
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ArchError(f"architecture JSON does not parse: {exc}") from None
            except RecursionError:
                raise ArchError("architecture JSON is nested too deeply; give {label: value}") from None
            if not isinstance(data, dict):
                raise ArchError(f"architecture JSON must be an object {{label: value}}, got {text[:40]!r}")
            if "arch" in data:
                return self.validate(Arch.from_json(data))
            return self.arch(data)
        parser = _ARCH_PARSERS.get(self.family)
        if parser is not None:
            parsed = parser(self, text)
            if parsed is not None:
                return self.validate(parsed)
        body = text.strip("()[] ")
        parts = [part.strip() for part in body.split(",") if part.strip()]
        try:
            indices = [int(part) for part in parts]
        except ValueError:
            by_values = self._from_value_names(parts)
            if by_values is not None:
                return by_values
            raise ArchError(
                f"cannot read architecture {text[:80]!r}: give an arch.json path, JSON "
                f"{{label: value}}, {len(self.choices)} comma-separated option indices, or "
                f"the {len(self.choices)} comma-separated option values that Arch.short() prints"
            ) from None
        return self.from_indices(indices)

    def _from_value_names(self, parts: Sequence[str]) -> Arch | None:
        """The architecture whose values print as ``parts`` (the :meth:`Arch.short` form), or
        None. All-integer text is read as indices before this is tried."""
        if len(parts) != len(self.choices):
            return None
        values = []
        for c, part in zip(self.choices, parts, strict=True):
            matches = [option for option in c.options if str(option) == part]
            if len(matches) != 1:
                return None
            values.append(matches[0])
        return self.arch(values)

    # ----------------------------------------------------------------- random operators
    def canonical(self, arch: Arch) -> Arch:
        """The representative of the architectures that compute the same function as ``arch``.

        Identity unless the family registered a canonical form
        (:func:`register_canonical_form`; e.g. NAS-Bench-201 cells whose edges feed a node
        nobody reads). Search scores one representative per function, so its budget is not
        spent on relabelled copies of one network.
        """
        form = _CANONICAL_FORMS.get(self.family)
        return self.validate(arch) if form is None else self.validate(form(self, self.validate(arch)))

    def sample(self, rng: random.Random) -> Arch:
        """One architecture drawn uniformly from the space."""
        return self.arch([rng.choice(c.options) for c in self.choices])

    def mutate(self, arch: Arch, rng: random.Random, *, prob: float = 0.1) -> Arch:
        """Resample each gene uniformly with probability ``prob`` (SPEC section 4)."""
        values = [
            rng.choice(c.options) if rng.random() < prob else arch[c.label] for c in self.choices
        ]
        return self.arch(values)

    def crossover(self, first: Arch, second: Arch, rng: random.Random) -> Arch:
        """Uniform crossover: each gene from either parent with probability 1/2."""
        values = [
            first[c.label] if rng.random() < 0.5 else second[c.label] for c in self.choices
        ]
        return self.arch(values)


SpaceFactory = Callable[..., SearchSpace]
_REGISTRY: dict[str, SpaceFactory] = {}
ArchParser = Callable[[SearchSpace, str], "Arch | None"]
_ARCH_PARSERS: dict[str, ArchParser] = {}


def register_arch_parser(family: str, parser: ArchParser) -> ArchParser:
    """Teach :meth:`SearchSpace.parse` a family's own text form of an architecture.

    ``parser(space, text)`` returns the :class:`Arch` or ``None`` when ``text`` is not in its
    format (parsing then falls back to the index tuple).
    """
    _ARCH_PARSERS[family] = parser
    return parser


CanonicalForm = Callable[[SearchSpace, Arch], Arch]
_CANONICAL_FORMS: dict[str, CanonicalForm] = {}


def register_canonical_form(family: str, form: CanonicalForm) -> CanonicalForm:
    """Teach :meth:`SearchSpace.canonical` which architectures of a family are the same network.

    ``form(space, arch)`` returns the representative of ``arch``'s class; it must compute
    exactly what ``arch`` computes (in the supernet and in the child network).
    """
    _CANONICAL_FORMS[family] = form
    return form


_MODEL_MODULES: dict[str, str] = {}
_FAMILY_ALIASES: dict[str, str] = {}


def register_model_module(family: str, module: str, *, aliases: Sequence[str] = ()) -> None:
    """Record that the models of ``family`` are registered by importing ``module``.

    A family's torch-free module calls this; :func:`spos.supernet.get_family` imports
    ``module`` (which calls :func:`spos.supernet.register_family`) the first time a model of
    the family is built, so defining and searching spaces never imports torch. ``aliases``
    are older names of the family that saved spaces may carry.

    Raises:
        ConfigError: If ``family`` or an alias already names another module or family.
    """
    if _MODEL_MODULES.get(family, module) != module or family in _FAMILY_ALIASES:
        raise ConfigError(f"model family {family!r} is already recorded elsewhere")
    _MODEL_MODULES[family] = module
    for alias in aliases:
        if _FAMILY_ALIASES.get(alias, family) != family or alias in _MODEL_MODULES:
            raise ConfigError(f"family alias {alias!r} already names another family")
        _FAMILY_ALIASES[alias] = family


def resolve_family(family: str) -> str:
    """The current name of ``family`` (itself unless it is an alias, e.g. ``"sequential"``)."""
    _load_builtins()
    return _FAMILY_ALIASES.get(family, family)


def model_modules() -> dict[str, str]:
    """``{family: module}`` of every family whose models are imported on first use."""
    _load_builtins()
    return dict(_MODEL_MODULES)


def register_space(name: str) -> Callable[[SpaceFactory], SpaceFactory]:
    """Decorator registering a space factory under ``name``.

    The factory takes layout keys as keyword arguments (all optional) and rebuilds the choices
    from them, so structural keys such as ``stage_repeats`` stay consistent with the choices.
    """

    def decorator(factory: SpaceFactory) -> SpaceFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ConfigError(f"a search space named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def _load_builtins() -> None:
    import spos.spaces  # noqa: F401  (registers the built-in spaces)


def list_spaces() -> list[str]:
    """Names of every registered space, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def create_space(name: str, **layout_updates: Any) -> SearchSpace:
    """The registered space ``name``, optionally with some layout keys replaced."""
    _load_builtins()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown search space {name!r}; known spaces: {list_spaces()}")
    default = _REGISTRY[name]()
    unknown = set(layout_updates) - set(default.layout)
    if unknown:
        raise ConfigError(
            f"space {name!r} has no layout key(s) {sorted(unknown)}; known keys: {sorted(default.layout)}"
        )
    return _REGISTRY[name](**layout_updates) if layout_updates else default


def iter_options(space: SearchSpace) -> Iterable[tuple[str, Value]]:
    """Every ``(label, option)`` pair of a space, in order (for coverage counters)."""
    for c in space.choices:
        for option in c.options:
            yield c.label, option
