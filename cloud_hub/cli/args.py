"""Parsers of operator input shared by the CLI commands (durations, labels)."""

from __future__ import annotations

import re

from cloud_hub.errors import ConfigError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> float:
    """'90s', '30m', '12h', '7d', '2w' or plain seconds."""
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise ConfigError(f"invalid duration {text!r}: use e.g. 90s, 30m, 12h, 7d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_labels(text: str | list[str]) -> dict[str, str]:
    """'k=v,k2=v2' (or a list of k=v) -> dict."""
    items = text if isinstance(text, list) else [p for p in text.split(",") if p.strip()]
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"invalid label {item!r}: use key=value")
        labels[key.strip()] = value.strip()
    return labels
