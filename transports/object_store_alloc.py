"""Best-fit allocator of page-aligned regions inside the object store's arena.

Theory of operation
-------------------
The arena is one shared-memory file of ``capacity`` bytes. ``RegionAllocator``
hands out regions ``[offset, offset + length)`` of it; every offset and length
is a multiple of ``PAGE_BYTES``, so another process can ``mmap`` a single
object with an offset, and no two objects share a page.

Free space is a set of maximal free blocks (no two adjacent), kept as a sorted
list of start offsets plus a map from start to length. ``allocate`` picks the
smallest block that fits (ties: lowest offset), so small objects fill holes and
large objects keep the big tail block; it carves from the front of the block.
``free`` merges the region with its neighbours and returns the merged block's
length, which tells the store's eviction loop whether enough contiguous space
is now available.

``high_water`` is the end of the highest region ever handed out. Pages below it
have been touched before and are resident; pages above it are still holes in
the tmpfs file, and the store allocates them (``fallocate``) before first use.

Invariants (``check_invariants``): free blocks are sorted, disjoint, non-adjacent,
page aligned and inside the arena; ``free_bytes`` is their total.
"""

from __future__ import annotations

import bisect
from typing import Final

PAGE_BYTES: Final = 4096


def round_up_to_page(size: int) -> int:
    """Rounds ``size`` up to a multiple of ``PAGE_BYTES``."""
    return (size + PAGE_BYTES - 1) // PAGE_BYTES * PAGE_BYTES


class RegionAllocator:
    """Best-fit allocation of page-aligned regions in ``[0, capacity_bytes)``."""

    __slots__ = ("_capacity", "_free_bytes", "_high_water", "_lengths", "_starts")

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0 or capacity_bytes % PAGE_BYTES:
            raise ValueError(
                f"allocator: capacity {capacity_bytes} must be a positive multiple of {PAGE_BYTES}"
            )
        self._capacity = capacity_bytes
        self._starts: list[int] = [0]
        self._lengths: dict[int, int] = {0: capacity_bytes}
        self._free_bytes = capacity_bytes
        self._high_water = 0

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def free_bytes(self) -> int:
        return self._free_bytes

    @property
    def high_water(self) -> int:
        """End of the highest region ever allocated (pages above it were never used)."""
        return self._high_water

    @property
    def largest_free_bytes(self) -> int:
        return max(self._lengths.values(), default=0)

    def allocate(self, length: int) -> int | None:
        """Reserves ``length`` bytes (a positive page multiple).

        Returns:
            The region's offset, or None when no free block is large enough.
        """
        if length <= 0 or length % PAGE_BYTES:
            raise ValueError(
                f"allocator: length {length} must be a positive multiple of {PAGE_BYTES}"
            )
        best = -1
        best_length = 0
        for start in self._starts:
            block = self._lengths[start]
            if block >= length and (best < 0 or block < best_length):
                best, best_length = start, block
                if block == length:
                    break
        if best < 0:
            return None
        index = bisect.bisect_left(self._starts, best)
        del self._starts[index]
        del self._lengths[best]
        if best_length > length:
            self._starts.insert(index, best + length)
            self._lengths[best + length] = best_length - length
        self._free_bytes -= length
        self._high_water = max(self._high_water, best + length)
        return best

    def free(self, offset: int, length: int) -> int:
        """Returns a region to the free space.

        Returns:
            The length of the free block that now contains the region (after merging).
        """
        end = offset + length
        if offset < 0 or end > self._capacity or length <= 0:
            raise AssertionError(f"allocator: cannot free [{offset}, {end}) outside the arena")
        index = bisect.bisect_left(self._starts, offset)
        if index < len(self._starts) and self._starts[index] < end:
            raise AssertionError(f"allocator: cannot free [{offset}, {end}): overlaps a free block")
        if index > 0:
            prev = self._starts[index - 1]
            if prev + self._lengths[prev] > offset:
                raise AssertionError(f"allocator: cannot free [{offset}, {end}): already free")
        self._free_bytes += length
        if index < len(self._starts) and self._starts[index] == end:
            length += self._lengths.pop(end)
            del self._starts[index]
        if index > 0:
            prev = self._starts[index - 1]
            if prev + self._lengths[prev] == offset:
                self._lengths[prev] += length
                return self._lengths[prev]
        self._starts.insert(index, offset)
        self._lengths[offset] = length
        return length

    def check_invariants(self) -> None:
        """Asserts that the free blocks are sorted, disjoint, merged and accounted."""
        assert self._starts == sorted(self._lengths), "allocator: start index out of sync"
        total = 0
        previous_end = -1
        for start in self._starts:
            length = self._lengths[start]
            assert start % PAGE_BYTES == 0 and length % PAGE_BYTES == 0 and length > 0
            assert start > previous_end, f"allocator: free blocks touch or overlap at {start}"
            previous_end = start + length
            total += length
        assert previous_end <= self._capacity, "allocator: free block past the arena"
        assert total == self._free_bytes, "allocator: free_bytes out of sync"
