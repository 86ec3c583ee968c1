"""Which servers exist: by profile id, and by every name a client may send (name or alias)."""

from __future__ import annotations

from collections.abc import Iterator

from gateway.serving.policy import ServerView
from gateway.serving.server import ManagedServer


class Registry:
    """The profiles' servers. A profile's own name wins over another profile's alias."""

    def __init__(self) -> None:
        self._by_id: dict[int, ManagedServer] = {}
        self._names: dict[str, ManagedServer] = {}

    def __iter__(self) -> Iterator[ManagedServer]:
        return iter(list(self._by_id.values()))

    def add(self, server: ManagedServer) -> None:
        self._by_id[server.profile_id] = server
        self.reindex()

    def remove(self, profile_id: int) -> ManagedServer | None:
        server = self._by_id.pop(profile_id, None)
        if server is not None:
            self.reindex()
        return server

    def reindex(self) -> None:
        """Rebuild the name index (after a profile's name or aliases changed)."""
        names: dict[str, ManagedServer] = {}
        for server in self._by_id.values():
            names[server.name] = server
        for server in self._by_id.values():
            for alias in server.profile.aliases:
                names.setdefault(alias, server)
        self._names = names

    def resolve(self, model: str) -> ManagedServer | None:
        return self._names.get(model)

    def get(self, profile_id: int) -> ManagedServer | None:
        return self._by_id.get(profile_id)

    def sorted(self) -> list[ManagedServer]:
        return sorted(self._by_id.values(), key=lambda s: s.name)

    def names_in_use(self, exclude_id: int | None = None) -> set[str]:
        return {
            name
            for name, server in self._names.items()
            if exclude_id is None or server.profile_id != exclude_id
        }

    def views(self, default_ttl: float) -> list[ServerView]:
        return [s.view(default_ttl) for s in self._by_id.values()]
