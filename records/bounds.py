"""A numeric field's bounds as its pydantic declaration gives them (Ge/Gt/Le), and the rule they make."""

from __future__ import annotations

from pydantic import BaseModel

# A job (a backup's or a restore's) runs two days at the most: a hung one must not hold its pool
# slot for ever.
MAX_JOB_SECONDS = 2 * 24 * 3600


def field_bounds(model: type[BaseModel], field: str) -> dict[str, float]:
    """{'ge': 1, 'le': 3600}: the bound constraints declared on `field`."""
    found: dict[str, float] = {}
    for constraint in model.model_fields[field].metadata:
        name = type(constraint).__name__.lower()
        if name in ("ge", "gt", "le", "lt"):
            found[name] = getattr(constraint, name)
    return found


def numeric_rule(model: type[BaseModel], field: str) -> str | None:
    """'a whole number from 1 to 60' / 'a number more than 0 and at most 366' (None: not numeric)."""
    declared = model.model_fields[field]
    if declared.annotation not in (int, float):
        return None
    bounds = field_bounds(model, field)
    kind = "a whole number" if declared.annotation is int else "a number"
    if "gt" in bounds:
        return f"{kind} more than {bounds['gt']} and at most {bounds['le']}"
    return f"{kind} from {bounds['ge']} to {bounds['le']}"
