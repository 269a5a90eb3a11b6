"""Type aliases shared by the ops (one name per concept)."""

from __future__ import annotations

# what a user may pass for a two-dimensional size: ``3`` or ``(3, 5)``
IntPair = int | tuple[int, int]
# a normalised two-dimensional size ``(height, width)``
Pair = tuple[int, int]
