"""Pass discovery through the entry-point group ``mcomp.passes``; the built-ins register the same way."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points

from mcomp.errors import ConfigError, McompError

GROUP = "mcomp.passes"


@lru_cache(maxsize=1)
def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def names() -> list[str]:
    return sorted(_entry_points())


def get(name: str):
    """The Pass class registered under ``name``."""
    eps = _entry_points()
    if name not in eps:
        raise ConfigError(f"unknown pass {name!r}; installed passes: {', '.join(sorted(eps)) or 'none'}")
    try:
        cls = eps[name].load()
    except Exception as exc:
        raise McompError(f"pass {name!r} failed to load from {eps[name].value}: {exc}") from exc
    return cls


def describe(name: str) -> dict:
    """Name, summary, needs and options (type, default, bounds, description) of a pass."""
    cls = get(name)
    schema = cls.Config.model_json_schema()
    options = {}
    for key, prop in schema.get("properties", {}).items():
        entry = {k: prop[k] for k in ("type", "default", "enum", "minimum", "maximum", "exclusiveMinimum",
                                       "exclusiveMaximum", "description") if k in prop}
        if "anyOf" in prop:
            entry["type"] = " | ".join(p.get("type", "?") for p in prop["anyOf"])
        options[key] = entry
    return {"name": name, "summary": cls.summary or (cls.__doc__ or "").strip().splitlines()[0],
            "needs": sorted(cls.needs), "options": options, "source": _entry_points()[name].value}
