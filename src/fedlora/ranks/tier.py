"""Rank tiers: the LoRA rank of every adapted module of one client.

A tier is FlexLoRA's "type": most are one rank everywhere (``r8``), some give different module
groups different ranks (Type 3: rank 30 on attention, 200 on the MLP). A tier maps module names to
ranks through an ordered list of patterns; the first pattern that matches a module decides its rank,
and modules no pattern matches get ``default``.

A pattern is either a built-in group alias (``attention``, ``mlp``; see :data:`GROUP_ALIASES`) or a
regular expression searched (``re.search``) in the module name, e.g. ``"q_proj|v_proj"``. Module
names are paths as ``model.named_modules()`` gives them, with or without PEFT's
``base_model.model.`` prefix; the aliases are anchored at the end of the name, so pass the name of
the adapted linear layer itself, not of its ``lora_A`` child.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from fedlora.errors import ConfigError
from fedlora.ranks._checks import check_rank

_ATTENTION = (
    # BERT (attention.self.query/key/value), ALBERT (attention.query/key/value), DistilBERT
    # (attention.q_lin/k_lin/v_lin/out_lin), Llama/Qwen/Mistral (self_attn.q/k/v/o_proj).
    r"(?:^|\.)(?:query|key|value|q_lin|k_lin|v_lin|out_lin|q_proj|k_proj|v_proj|o_proj)$"
    # BERT's attention output projection (attention.output.dense) and ALBERT's (attention.dense).
    r"|(?:^|\.)attention\.(?:output\.)?dense$"
    # GPT-2 (attn.c_attn, the fused q/k/v, and attn.c_proj).
    r"|(?:^|\.)attn\.c_(?:attn|proj)$"
)
_MLP = (
    # BERT (intermediate.dense), DistilBERT (ffn.lin1/lin2), Llama/Qwen/Mistral (mlp.gate/up/
    # down_proj), ALBERT (ffn, ffn_output).
    r"(?:^|\.)(?:intermediate\.dense|lin1|lin2|gate_proj|up_proj|down_proj|ffn|ffn_output)$"
    # BERT's layer output (layer.N.output.dense) but not attention.output.dense.
    r"|(?:^|(?<!attention)\.)output\.dense$"
    # GPT-2 (mlp.c_fc, mlp.c_proj).
    r"|(?:^|\.)mlp\.c_(?:fc|proj)$"
)

GROUP_ALIASES: Mapping[str, str] = MappingProxyType({"attention": _ATTENTION, "mlp": _MLP})
"""Built-in pattern names and the regular expressions they stand for.

``attention`` matches the query/key/value/output projections: module names ending in ``query``,
``key``, ``value``, ``attention.dense``, ``attention.output.dense`` (BERT, ALBERT), ``q_lin``,
``k_lin``, ``v_lin``, ``out_lin`` (DistilBERT), ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``
(Llama, Qwen, Mistral), ``attn.c_attn``, ``attn.c_proj`` (GPT-2). ``mlp`` matches the
feed-forward layers: names ending in ``intermediate.dense`` or ``output.dense`` other than
``attention.output.dense`` (BERT), ``lin1``, ``lin2`` (DistilBERT), ``gate_proj``, ``up_proj``,
``down_proj`` (Llama), ``ffn``, ``ffn_output`` (ALBERT), ``mlp.c_fc``, ``mlp.c_proj`` (GPT-2).
Each name is matched as whole dotted components, so ``xq_proj`` is neither.
"""

_RESERVED_SHORT_KEYS = ("default", "name")


def _compile(pattern: str, option: str) -> re.Pattern[str]:
    """The compiled regex for a pattern key: an alias's expression, or the key itself."""
    try:
        return re.compile(GROUP_ALIASES.get(pattern, pattern))
    except re.error as exc:
        raise ConfigError(
            f"{option}: pattern {pattern!r} is neither a group alias "
            f"({', '.join(GROUP_ALIASES)}) nor a valid regular expression ({exc})"
        ) from None


def _derived_name(default: int, patterns: Mapping[str, int]) -> str:
    """``r8`` for a uniform tier; ``attention30-mlp200`` for a per-group one."""
    if not patterns:
        return f"r{default}"
    name = "-".join(f"{pattern}{rank}" for pattern, rank in patterns.items())
    return name if default == min(patterns.values()) else f"{name}-default{default}"


@dataclass(frozen=True, eq=False, repr=False)
class RankTier:
    """The ranks one client trains: ``patterns`` in declared order, ``default`` for the rest.

    Equality and hashing include the order of ``patterns``, because the first match wins.
    """

    name: str
    default: int
    patterns: Mapping[str, int] = field(default_factory=dict)
    _compiled: tuple[tuple[re.Pattern[str], int], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"tier name must be a non-empty string, got {self.name!r}")
        check_rank(self.default, f"tier {self.name!r} default")
        if not isinstance(self.patterns, Mapping):
            raise ConfigError(
                f"tier {self.name!r} patterns must be a mapping of pattern to rank, "
                f"got {type(self.patterns).__name__}"
            )
        compiled = []
        for pattern, rank in self.patterns.items():
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(
                    f"tier {self.name!r}: pattern keys must be non-empty strings, got {pattern!r}"
                )
            check_rank(rank, f"tier {self.name!r} pattern {pattern!r}")
            compiled.append((_compile(pattern, f"tier {self.name!r}"), rank))
        object.__setattr__(self, "patterns", MappingProxyType(dict(self.patterns)))
        object.__setattr__(self, "_compiled", tuple(compiled))

    # construction -----------------------------------------------------------------------------

    @classmethod
    def uniform(cls, rank: int) -> RankTier:
        """One rank on every module, named ``r<rank>``."""
        return cls(name=f"r{check_rank(rank, 'rank')}", default=rank)

    @classmethod
    def from_patterns(
        cls, patterns: Mapping[str, int], *, default: int | None = None, name: str | None = None
    ) -> RankTier:
        """A per-group tier; ``default`` (unmatched modules) is the smallest pattern rank if unset.

        The smallest rank is the cheap, safe guess for modules the user did not name; pass
        ``default`` explicitly when a model has adapted modules outside the named groups.
        """
        if not isinstance(patterns, Mapping) or not patterns:
            raise ConfigError(f"tier patterns must be a non-empty mapping, got {patterns!r}")
        for pattern, rank in patterns.items():
            check_rank(rank, f"tier pattern {pattern!r}")
        resolved = min(patterns.values()) if default is None else check_rank(default, "default")
        return cls(
            name=_derived_name(resolved, patterns) if name is None else name,
            default=resolved,
            patterns=patterns,
        )

    @classmethod
    def parse(cls, value: object, option: str = "rank") -> RankTier:
        """A tier from a config value.

        Accepted: a :class:`RankTier`; an int (uniform tier); a string ``"r8"`` or ``"8"``; the
        short mapping ``{attention = 30, mlp = 200}`` (optional ``default`` and ``name`` keys);
        or the :meth:`to_dict` form ``{name, default, patterns}``. ``option`` names the config
        key in error messages.
        """
        if isinstance(value, RankTier):
            return value
        if isinstance(value, bool):
            raise ConfigError(f"{option} must be a rank or a tier mapping, got {value!r}")
        if isinstance(value, int):
            return cls.uniform(check_rank(value, option))
        if isinstance(value, str):
            digits = value[1:] if value[:1] in ("r", "R") else value
            if digits.isdecimal():
                return cls.uniform(check_rank(int(digits), option))
            raise ConfigError(f"{option} must be a rank such as 8 or 'r8', got {value!r}")
        if isinstance(value, Mapping):
            if "patterns" in value:
                return cls.from_dict(value, option)
            patterns = {k: v for k, v in value.items() if k not in _RESERVED_SHORT_KEYS}
            if not patterns:
                raise ConfigError(f"{option} tier mapping names no module pattern: {value!r}")
            name = value.get("name")
            if name is not None and not isinstance(name, str):
                raise ConfigError(f"{option}.name must be a string, got {name!r}")
            default = value.get("default")
            try:
                return cls.from_patterns(
                    patterns,
                    default=None if default is None else check_rank(default, "default"),
                    name=name,
                )
            except ConfigError as exc:
                raise ConfigError(f"{option}: {exc}") from None
        raise ConfigError(
            f"{option} must be a rank or a tier mapping, got {type(value).__name__} {value!r}"
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], option: str = "tier") -> RankTier:
        """The inverse of :meth:`to_dict`; ``name`` may be omitted (it is then derived)."""
        unknown = sorted(set(data) - {"name", "default", "patterns"})
        if unknown:
            raise ConfigError(
                f"{option} has unknown key {unknown[0]!r}; valid keys: name, default, patterns"
            )
        if "default" not in data:
            raise ConfigError(f"{option} is missing the key 'default'")
        default = check_rank(data["default"], f"{option}.default")
        patterns = data.get("patterns", {})
        if not isinstance(patterns, Mapping):
            raise ConfigError(f"{option}.patterns must be a mapping, got {patterns!r}")
        name = data.get("name")
        if name is None:
            name = _derived_name(default, patterns)
        return cls(name=name, default=default, patterns=patterns)

    def to_dict(self) -> dict[str, Any]:
        """A JSON/TOML-ready dict; pattern order is kept (it decides the first match)."""
        return {"name": self.name, "default": self.default, "patterns": dict(self.patterns)}

    def to_config(self) -> int | dict[str, Any]:
        """The shortest config value :meth:`parse` turns back into this tier: an int if it can."""
        return self.default if self == RankTier.uniform(self.default) else self.to_dict()

    # queries --------------------------------------------------------------------------------

    def rank_for(self, module_name: str) -> int:
        """The rank of one module: the first matching pattern's rank, else ``default``."""
        for regex, rank in self._compiled:
            if regex.search(module_name):
                return rank
        return self.default

    def rank_map(self, module_names: Iterable[str]) -> dict[str, int]:
        """``module name -> rank`` for every given module (a PEFT ``rank_pattern``-ready map)."""
        return {name: self.rank_for(name) for name in module_names}

    def capped_rank_map(self, shapes: Mapping[str, tuple[int, int]]) -> dict[str, int]:
        """:meth:`rank_map` with each rank cut to ``min(out, in)``, the most its layer can hold.

        FlexLoRA's rank 200 does not fit a model's narrower layers (SmolLM2-135M's 192-wide
        key/value projections): this is the tier as close as such a model allows.
        """
        return {name: min(rank, *shapes[name]) for name, rank in self.rank_map(shapes).items()}

    def unused_patterns(self, module_names: Iterable[str]) -> list[str]:
        """Patterns that decide no module's rank: usually a sign the aliases miss this model."""
        names = list(module_names)
        used = set()
        for name in names:
            for index, (regex, _) in enumerate(self._compiled):
                if regex.search(name):
                    used.add(index)
                    break
        return [pattern for index, pattern in enumerate(self.patterns) if index not in used]

    @property
    def max_rank(self) -> int:
        """The largest rank any module can get (patterns and default)."""
        return max([self.default, *self.patterns.values()])

    @property
    def is_uniform(self) -> bool:
        """True when every module gets the same rank, whatever its name."""
        return all(rank == self.default for rank in self.patterns.values())

    # identity -------------------------------------------------------------------------------

    def _key(self) -> tuple[str, int, tuple[tuple[str, int], ...]]:
        return (self.name, self.default, tuple(self.patterns.items()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RankTier):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"RankTier(name={self.name!r}, default={self.default}, patterns={dict(self.patterns)})"
        )

    def __str__(self) -> str:
        return self.name
