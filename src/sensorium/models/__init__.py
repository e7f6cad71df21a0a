"""The model families, one file each; this registry is how the loader finds them (imported on first use,
so `import sensorium` does not build every family's tables)."""

from __future__ import annotations

import importlib

from sensorium.models.family import Family

FAMILY_FILES = ("pe", "ast", "pe_av", "af3", "plm")


def family(name: str) -> Family:
    """The FAMILY record of sensorium.models.<name>."""
    if name not in FAMILY_FILES:
        raise KeyError(f"no model family {name!r} (families: {', '.join(FAMILY_FILES)})")
    return importlib.import_module(f"sensorium.models.{name}").FAMILY


def families() -> list[Family]:
    return [family(name) for name in FAMILY_FILES]


def family_of(config: object) -> Family:
    """The family that builds this config."""
    for candidate in families():
        if isinstance(config, candidate.config_type):
            return candidate
    raise TypeError(f"no model family builds a {type(config).__name__}")
