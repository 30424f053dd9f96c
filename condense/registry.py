"""One small generic registry, instantiated once per kind (datasets, models, algorithms, protocols).

Why one class: torchdistill writes the same decorator once per kind and they drift apart;
here every kind fails the same way, with a message that names the key and the choices.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from condense.errors import CondenseError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a lowercase name to an object (a class or a factory function).

    >>> MODELS = Registry("model")
    >>> @MODELS.register("mlp")
    ... class MLP: ...
    >>> MODELS.get("MLP") is MLP
    True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = {}  # name -> module that registers it when imported

    def register_lazy(self, name: str, module: str) -> None:
        """Announce `name`, registered by `module` when that module is imported on first use (so a
        heavy module, e.g. one importing torchvision, costs nothing until it is needed)."""
        self._lazy[name.lower()] = module

    def register(self, name: str) -> Callable[[T], T]:
        key = name.lower()

        def add(obj: T) -> T:
            if key in self._items and self._items[key] is not obj:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._items[key] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        key = name.lower()
        if key not in self._items and key in self._lazy:
            import importlib

            importlib.import_module(self._lazy[key])
        if key not in self._items:
            choices = ", ".join(self.names()) or "(none registered)"
            raise CondenseError(
                f"Unknown {self.kind} '{name}'. Available {self.kind}s: {choices}. "
                f"Check the spelling of the name you passed."
            )
        return self._items[key]

    def names(self) -> list[str]:
        return sorted(set(self._items) | set(self._lazy))

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items or name.lower() in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
