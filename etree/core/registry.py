"""Factories by name, with one option checker for all of them.

A :class:`Registry` is a plain dict from name to factory, filled by a decorator
(Flower's ClientApp decorators; docs/ARCHITECTURE.md, registries): a duplicate name is
refused, an unknown name lists the valid ones, and every option a spec passes is
checked against the factory's own annotations and defaults before it is called:
its type (``int``, ``float``, ``bool``, ``str``, sequences, unions, ``None``) and,
for every number, finiteness. The same registry lists its factories with their
options for ``etree list``.
"""

from __future__ import annotations

import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from etree.core.errors import EtreeError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Option:
    """One keyword-only option of a factory: its name, annotation and default (``inspect._empty``: required)."""

    name: str
    annotation: Any
    default: Any

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def describe(self) -> str:
        """``name: type = default``, for ``etree list``."""
        text = f"{self.name}: {type_name(self.annotation)}"
        return text if self.required else f"{text} = {self.default!r}"


def type_name(annotation: Any) -> str:
    """A short readable name of an annotation (``int``, ``float | None``, ``sequence of int``)."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return "any"
    if annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None and args and _is_sequence_origin(origin):
        return f"sequence of {type_name(args[0])}"
    return getattr(annotation, "__name__", str(annotation))


def _is_sequence_origin(origin: Any) -> bool:
    return isinstance(origin, type) and issubclass(origin, list | tuple | Sequence) and origin is not str


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` has the type ``annotation`` names (unknown annotations accept anything)."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    if annotation is type(None) or annotation is None:
        return value is None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return _is_int(value)
    if annotation is float:
        return _is_real(value)
    if annotation is str:
        return isinstance(value, str)
    if origin is not None and _is_sequence_origin(origin):
        if not isinstance(value, list | tuple):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):  # tuple[int, str]: one type per slot
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return all(_matches(v, args[0]) for v in value)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    if isinstance(origin, type):  # a parametrised class such as os.PathLike[str]: its class decides
        return isinstance(value, origin)
    return True


def _non_finite(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return any(_non_finite(v) for v in value)
    if isinstance(value, Mapping):
        return any(_non_finite(v) for v in value.values())
    return _is_real(value) and not math.isfinite(float(value))


def check_option(field: str, value: Any, annotation: Any, error: type[EtreeError] = EtreeError) -> None:
    """Refuse ``value`` for ``field`` unless it has the annotated type and every number in it is finite."""
    if _non_finite(value):
        raise error(f"{field}: {value!r} is not allowed; must be a finite number")
    if not _matches(value, annotation):
        raise error(f"{field}: {value!r} is not allowed; must be {type_name(annotation)}")


class Registry(Generic[F]):
    """Named factories of one kind (``what``, e.g. ``"protocol"``), the spec field that names them
    (``field``, e.g. ``"protocols.name"``) and the parameters that are not user options (``fixed``:
    the positional arguments and what the runner passes, such as ``seed``)."""

    def __init__(
        self, what: str, field: str, *, fixed: tuple[str, ...] = (), error: type[EtreeError] = EtreeError
    ) -> None:
        self.what, self.field, self.fixed, self.error = what, field, fixed, error
        self._factories: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator adding ``factory`` under ``name``; a name is taken once."""

        def add(factory: F) -> F:
            if not isinstance(name, str) or not name:
                raise self.error(f"{self.field}: a {self.what} name must be a non-empty string, got {name!r}")
            if name in self._factories:
                raise self.error(f"{self.field}: {self.what} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return add

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._factories))

    def __len__(self) -> int:
        return len(self._factories)

    def __getitem__(self, name: str) -> F:
        return self.get(name)

    def __delitem__(self, name: str) -> None:
        """Forget ``name`` (a notebook re-registering its plug-in, a test cleaning up)."""
        del self._factories[name]

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: Any) -> F:
        """The factory called ``name``; an unknown name lists the valid ones."""
        if not isinstance(name, str) or name not in self._factories:
            raise self.error(f"{self.field}: unknown {name!r}; choose one of: {', '.join(self.names())}")
        return self._factories[name]

    def options(self, name: str) -> dict[str, Option]:
        """The user options of ``name``: its keyword-only parameters outside ``fixed``, with annotations."""
        factory = self.get(name)
        try:
            hints = typing.get_type_hints(factory)
        except Exception:  # an annotation that does not resolve is not checked, only finiteness is
            hints = {}
        return {
            p.name: Option(p.name, hints.get(p.name, Any), p.default)
            for p in inspect.signature(factory).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name not in self.fixed
        }

    def check(self, name: str, options: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        """``options`` checked against ``name``'s parameters: no unknown or missing option, each of
        its annotated type and finite. ``prefix`` is the spec table (``protocols.fedavg``)."""
        accepted = self.options(name)
        for option in sorted(options):
            if option not in accepted:
                valid = ", ".join(sorted(accepted)) or "none"
                raise self.error(f"{prefix}.{option}: unknown option {option!r} for {name!r}; valid options: {valid}")
        for option, spec in sorted(accepted.items()):
            if spec.required and option not in options:
                raise self.error(f"{prefix}.{option}: required by {self.what} {name!r} but not given")
        for option, value in sorted(options.items()):
            check_option(f"{prefix}.{option}", value, accepted[option].annotation, self.error)
        return dict(options)

    def describe(self) -> dict[str, list[str]]:
        """Every name with its options as ``name: type = default`` lines (``etree list``)."""
        return {name: [o.describe() for o in self.options(name).values()] for name in self.names()}
