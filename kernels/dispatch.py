"""Variant dispatch by measurement: at each shape, the variant of a product that measured fastest on this device.

Some kernels have several variants that compute the same product from the same layer (``matshift``: ``xor`` and
``mul``, bit-exact to the same reference), and which is fastest depends on the shape and the machine.
``nas profile`` times every candidate variant at every shape the space produces (:data:`CANDIDATES`); a
:class:`Dispatch` built from those timings tells the kernel runtime which one to run, so the modules ``nas profile``
times next, and the models a search prices, run the fastest measured variant. A shape where not every candidate
was timed (no timing, or rows from before a candidate existed) runs the kernel's default variant.

Example:
    >>> d = Dispatch.from_timings([("matshift", "mul", 197, 192, 576, "int32", 1.1),
    ...                            ("matshift", "xor", 197, 192, 576, "int32", 0.9)])
    >>> d.variant("matshift", 197, 192, 576, "int32", default="mul")
    'xor'
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

# kernel -> the variants dispatch chooses between (each takes the same layer, packed its own way). matshift's
# ``select`` is left out: tuned, it was never the fastest of the three at the bench's seven linear shapes
# (bench/results/kernels-cpu.md), and timing it would add a third to the tuning time of every profile.
CANDIDATES: dict[str, tuple[str, ...]] = {"matshift": ("xor", "mul")}

Shape = tuple[str, int, int, int, str]  # kernel, M, K, N, dtype


class Dispatch:
    """Per (kernel, M, K, N, dtype): the median ms of each candidate variant measured there."""

    def __init__(self, timings: dict[Shape, dict[str, float]] | None = None) -> None:
        self.timings: dict[Shape, dict[str, float]] = timings or {}

    @classmethod
    def from_timings(cls, rows: Iterable[tuple[str, str, int, int, int, str, float]]) -> "Dispatch":
        """From ``(kernel, variant, M, K, N, dtype, median_ms)``; rows of kernels or variants that are not
        candidates are ignored."""
        timings: dict[Shape, dict[str, float]] = defaultdict(dict)
        for kernel, variant, m, k, n, dtype, ms in rows:
            if variant in CANDIDATES.get(kernel, ()):
                timings[(kernel, int(m), int(k), int(n), dtype)][variant] = float(ms)
        return cls(dict(timings))

    def _compared(self) -> dict[Shape, dict[str, float]]:
        """The shapes where every candidate was timed: only there is one known to be the fastest (a table may hold
        shapes timed before a candidate existed, with one variant only)."""
        return {shape: ms for shape, ms in self.timings.items() if set(ms) == set(CANDIDATES[shape[0]])}

    def variant(self, kernel: str, m: int, k: int, n: int, dtype: str, default: str) -> str:
        """The fastest variant at this shape where every candidate was timed there, else ``default``."""
        measured = self.timings.get((kernel, m, k, n, dtype))
        if not measured or set(measured) != set(CANDIDATES[kernel]):
            return default
        return min(measured, key=measured.get)

    def wins(self, kernel: str) -> Counter:
        """How many compared shapes each variant of ``kernel`` is the fastest at."""
        return Counter(min(ms, key=ms.get) for shape, ms in self._compared().items() if shape[0] == kernel)

    def describe(self) -> str:
        """One clause per dispatched kernel: ``matshift: xor fastest at 10 of 12 shape(s), mul at 2``."""
        lines = []
        for kernel in sorted({shape[0] for shape in self._compared()}):
            wins = self.wins(kernel).most_common()
            total = sum(n for _, n in wins)
            (first, count), rest = wins[0], wins[1:]
            text = f"{kernel}: {first} fastest at {count} of {total} shape(s)"
            lines.append(text + "".join(f", {variant} at {n}" for variant, n in rest))
        return "; ".join(lines)

    def to_dict(self) -> dict[str, str]:
        """``{"matshift-197x192x576-int32": "xor", ...}``: the choice at each measured shape."""
        return {f"{kernel}-{m}x{k}x{n}-{dtype}": min(ms, key=ms.get)
                for (kernel, m, k, n, dtype), ms in sorted(self._compared().items())}

    def __bool__(self) -> bool:
        return bool(self._compared())
