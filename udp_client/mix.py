"""Monitor mix specs: which stems, at what gain, go to the headphones."""

from __future__ import annotations

import numpy as np

from stemlink.udp_client.core import ClientError

MAX_GAIN = 4.0


def default_mix(stems: list[str]) -> str:
    """What `live` plays without --monitor: the accompaniment (everything but vocals) when
    the model separates vocals, else every stem."""
    if "accompaniment" in stems:
        return "accompaniment"
    rest = [s for s in stems if s != "vocals"]
    return ",".join(rest or stems)


def parse_mix(spec: str | None, stems: list[str]) -> np.ndarray:
    """'vocals' | 'drums=0,vocals=1,bass=0.5' | 'all' -> gains per stem (unnamed: 0)."""
    if spec is None:
        spec = default_mix(stems)
    if spec.strip() == "all":
        return np.ones(len(stems), np.float32)
    gains = np.zeros(len(stems), np.float32)
    seen: set[str] = set()
    for part in spec.split(","):
        name, _, g = part.strip().partition("=")
        name = name.strip()
        if name not in stems:
            raise ClientError(f"--monitor: unknown stem {name!r}; the model has "
                              f"{', '.join(stems)}")
        if name in seen:
            raise ClientError(f"--monitor: stem {name!r} is named twice")
        seen.add(name)
        try:
            gains[stems.index(name)] = float(g) if g else 1.0
        except ValueError:
            raise ClientError(f"--monitor: gain {g!r} is not a number") from None
    if not np.all(np.isfinite(gains)) or np.any(np.abs(gains) > MAX_GAIN):
        raise ClientError(f"--monitor: gains must be finite and within [-{MAX_GAIN:g}, "
                          f"{MAX_GAIN:g}]")
    if not np.any(gains):
        raise ClientError("--monitor: every gain is 0; name at least one stem to hear")
    return gains
