"""Name -> factory registries with clear errors (models, neurons, surrogates, datasets, losses)."""
from __future__ import annotations

import inspect
from typing import Any, Callable


class Registry:
    """A named table of factories.  ``registry.create(name, **kw)`` checks the name and the
    keyword arguments against the factory's signature and says what is valid."""

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None):
        def decorator(factory):
            key = name or factory.__name__
            if key in self._factories:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._factories[key] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._factories:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._factories[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        factory = self.get(name)
        params = inspect.signature(factory).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(kwargs) - set(params))
            if unknown:
                valid = [p for p in params if params[p].kind is not inspect.Parameter.VAR_POSITIONAL]
                raise ValueError(
                    f"{self.kind} {name!r} got unknown option(s) {unknown}; valid options: {valid}"
                )
        return factory(**kwargs)
