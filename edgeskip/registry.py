"""A tiny name -> object registry shared by models, exporters, backends and devices."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from edgeskip.errors import UnknownNameError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Maps names to entries; lookups of unknown names raise :class:`UnknownNameError`.

    ``kind`` is used in messages ("unknown model 'vit11'; available: vit7, vit9").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, *, overwrite: bool = False) -> T:
        """Register ``entry`` under ``name`` and return it."""
        if not name or name != name.strip():
            raise ValueError(f"invalid {self.kind} name {name!r}")
        if name in self._entries and not overwrite:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise with the list of valid names."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self._entries) or "none registered"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; available: {known}") from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
