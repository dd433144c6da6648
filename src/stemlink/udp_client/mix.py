"""Monitor mix specs: which stems, at what gain, go to the headphones."""

from __future__ import annotations

import numpy as np

from stemlink.udp_client.core import ClientError


def parse_mix(spec: str, stems: list[str]) -> np.ndarray:
    """'vocals' | 'accompaniment' | 'vocals=0.3,accompaniment=1' -> gains per stem."""
    gains = np.zeros(len(stems), np.float32)
    for part in spec.split(","):
        name, _, g = part.strip().partition("=")
        if name not in stems:
            raise ClientError(f"--monitor: unknown stem {name!r}; the model has "
                              f"{', '.join(stems)}")
        try:
            gains[stems.index(name)] = float(g) if g else 1.0
        except ValueError:
            raise ClientError(f"--monitor: gain {g!r} is not a number") from None
    if not np.all(np.isfinite(gains)) or np.any(np.abs(gains) > 4):
        raise ClientError("--monitor: gains must be finite and within [-4, 4]")
    return gains
