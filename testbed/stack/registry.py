"""Algorithms chosen by name (congestion controllers, schedulers, path managers): one small
registry type, so that each kind is registered, looked up and listed the same way and an
unknown name is always refused with the list of known ones."""

from __future__ import annotations

from typing import Generic, TypeVar

from testbed.errors import ParameterError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str) -> None:
        self.what = what  # "congestion control", "MPTCP scheduler", ...
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> None:
        """Make `entry` selectable as `name`; registering a name again replaces it."""
        if not name:
            raise ParameterError(f"a {self.what} needs a non-empty name")
        self._entries[name] = entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ParameterError(f"unknown {self.what} {name!r}; "
                                 f"available: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)
