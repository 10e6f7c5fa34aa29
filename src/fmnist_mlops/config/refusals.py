"""A config the schema refuses, as one line: the key, the value and what is accepted.

A leaf (pydantic only): the stage config (:mod:`schema`) and each command's own settings
(:mod:`commands`) pass their schema in.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError


def _describe(loc: tuple[Any, ...], root: Any) -> tuple[str, str | None]:
    """Dotted key and the accepted-values text of the field at ``loc``."""
    model: Any = root
    keys: list[str] = []
    description = None
    for part in loc:
        if not isinstance(part, str) or model is None:
            break  # list index or a type-union branch: the field itself is what matters
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            break
        keys.append(part)
        info = fields[part]
        description = info.description
        annotation = info.annotation
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
    return ".".join(keys), description


def first_error(data: dict[str, Any], exc: ValidationError, root: type[BaseModel]) -> str:
    """One line for the first violation of ``root``'s schema: key, value and what is accepted."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    key, description = _describe(loc, root)
    if err["type"] == "extra_forbidden":
        parent_key, _ = _describe(loc[:-1], root)
        name = ".".join(str(p) for p in loc)
        return f"{name} is not a setting of {parent_key or 'the config'}: remove it or fix its name"
    if err["type"] == "missing":
        return f"{key} is missing: expected {description or 'a value'}"
    value: Any = data
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if err["type"] == "finite_number":
        return f"{key}={value!r} is invalid: expected a finite number, {description or ''}"
    return f"{key}={value!r} is invalid: expected {description or err['msg']}"
