"""One way to write byte sizes everywhere (progress bars, ``cache``, errors): decimal SI units.

``1 kB = 1000 B``, ``1 MB = 1000 kB``, ... as disks, networks and rich's download column count.
Standard library only, so every layer may use it.
"""
from __future__ import annotations

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def format_size(num_bytes: int | float | None) -> str:
    """``1234567`` -> ``"1.2 MB"``; ``None`` -> ``"-"``. Whole bytes below 1 kB."""
    if num_bytes is None:
        return "-"
    size = float(num_bytes)
    for unit in _UNITS:
        if abs(size) < 1000 or unit == _UNITS[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
