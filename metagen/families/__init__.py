"""Model families, one module each. ``FAMILIES`` maps a name to its class; a new family is one more entry."""

from __future__ import annotations

from metagen.errors import ConfigError
from metagen.families._base import Candidate, Family, TaskInfo, Trained
from metagen.families.forest import Forest
from metagen.families.gbdt import GBDT
from metagen.families.linear import Linear
from metagen.families.mlp import MLPFamily

FAMILIES: dict[str, type[Family]] = {cls.name: cls for cls in (GBDT, Forest, Linear, MLPFamily)}
ALL = tuple(FAMILIES)


def parse_families(names: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``"gbdt,mlp"`` or a list to a tuple of known family names, in the given order; None: every family."""
    if names is None:
        return ALL
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n).strip() for n in names]
    items = [n for n in dict.fromkeys(items) if n]
    unknown = [n for n in items if n not in FAMILIES]
    if unknown or not items:
        raise ConfigError(f"Unknown model famil{'ies' if len(unknown) > 1 else 'y'}: {', '.join(unknown) or 'none given'}.",
                          f"Choose from {', '.join(ALL)} (comma-separated).")
    return tuple(items)


__all__ = ["ALL", "FAMILIES", "Candidate", "Family", "TaskInfo", "Trained", "parse_families"]
