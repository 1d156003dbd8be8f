"""Name → class registries with helpful errors, shared by aggregators, partitioners and policies."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from fedlora.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes by their ``name`` attribute; lookups ignore case and treat ``-`` as ``_``.

    A typo gets the valid names and the closest match; an unknown or missing option gets the
    class's options, all in one line.
    """

    def __init__(self, kind: str, classes: Iterable[type[T]]) -> None:
        self.kind = kind
        self._classes: dict[str, type[T]] = {cls.name: cls for cls in classes}  # type: ignore[attr-defined]

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get_class(self, name: str) -> type[T]:
        key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
        try:
            return self._classes[key]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(key), self._classes, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint}; valid names: {', '.join(self.names())}"
            ) from None

    def options(self, name: str) -> dict[str, bool]:
        """The keyword options of ``name`` in signature order, each mapped to whether required."""
        parameters = inspect.signature(self.get_class(name).__init__).parameters
        return {
            key: p.default is inspect.Parameter.empty
            for key, p in parameters.items()
            if key != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }

    def build(self, name: str, **options: Any) -> T:
        cls = self.get_class(name)
        valid = self.options(name)
        label = f"{self.kind} {cls.name!r}"  # type: ignore[attr-defined]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            close = difflib.get_close_matches(unknown[0], valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{label} has no option {unknown[0]!r}{hint}; its options: {', '.join(valid)}"
            )
        missing = [key for key, required in valid.items() if required and key not in options]
        if missing:
            raise ConfigError(f"{label} needs the option {missing[0]!r}")
        return cls(**options)
