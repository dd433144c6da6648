"""Percentile summaries shared by the client's report and the benchmarks (numpy only)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def summarize(values: Iterable[float], qs: tuple[float, ...] = (50, 95, 99)) -> dict:
    """{p50: …, p95: …, p99: …, mean, max, n} over the finite values; NaNs when empty."""
    a = np.asarray(list(values), np.float64).ravel()
    a = a[np.isfinite(a)]
    out = {f"p{q:g}": float(np.percentile(a, q)) if a.size else float("nan") for q in qs}
    out["mean"] = float(a.mean()) if a.size else float("nan")
    out["max"] = float(a.max()) if a.size else float("nan")
    out["n"] = int(a.size)
    return out
