"""Token ids of documents' text runs tokenized before, kept by their text.

A run's ids depend only on its text and the tokenizer (the ordinary path tokenizes each run on its
own: `Preprocessor._run_takes`), so a run met again is answered with the same ids without the
tokenizer. Search traffic repeats documents across queries (a catalogue's popular products come
back for many queries, each time with a new query, so the pair-score cache cannot answer them):
the tokenizer was ~60% of preparing T100's documents (bench/RESULTS.md, "Preparing T100's
documents"). Ids are held and handed out as tuples: nobody can change what is held, and a new run
costs one tuple and its share of two locked passes over the map. Arrays of 32-bit ids would hold
~4 bytes a token instead of ~36, but making one and a list from it cost ~1 us each per title:
100 new titles were prepared 1.06x slower that way on the development host."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence

from ..util.lru import LRU

# Bytes an entry holds beyond its text: the tuple's slot and int object per token (ids above 256
# are objects of their own), the tuple itself and the map's entry.
BYTES_PER_TOKEN = 8 + 28
ENTRY_OVERHEAD = 40 + 100

Ids = tuple[int, ...]


def _size(entry: tuple[int, Ids]) -> int:
    return entry[0]


class RunIds:
    """A bounded least-recently-used map from a run's text to its ids; `capacity_bytes` 0 keeps
    nothing (every run is tokenized). Thread-safe: the preparing thread and a decode task may ask
    at once."""

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = max(0, capacity_bytes)
        self._held: LRU[str, tuple[int, Ids]] = LRU(max_size=self.capacity_bytes, size_of=_size)
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def ids(self, texts: Sequence[str], tokenize: Callable[[list[str]], list[list[int]]]) -> list[Sequence[int]]:
        """Each text's ids: those held, and the others through one `tokenize` call (then held)."""
        if not self.capacity_bytes:
            return list(tokenize(list(texts)))
        out: list[Sequence[int]] = []
        missing: list[int] = []
        for i, entry in enumerate(self._held.get_many(texts)):
            if entry is None:
                missing.append(i)
                out.append(())
            else:
                out.append(entry[1])
        if missing:
            made = [tuple(ids) for ids in tokenize([texts[i] for i in missing])]
            for i, ids in zip(missing, made):
                out[i] = ids
            self._held.put_many(
                (texts[i], (sys.getsizeof(texts[i]) + BYTES_PER_TOKEN * len(ids) + ENTRY_OVERHEAD, ids))
                for i, ids in zip(missing, made))
        self._count(len(texts) - len(missing), len(missing))
        return out

    def known(self, texts: Sequence[str]) -> list[Sequence[int]] | None:
        """Every text's ids when all are held (counted as hits), else None (nothing counted)."""
        if not self.capacity_bytes:
            return None
        entries = self._held.get_many(texts)
        out: list[Sequence[int]] = []
        for entry in entries:
            if entry is None:
                return None
            out.append(entry[1])
        self._count(len(texts), 0)
        return out

    def clear(self) -> None:
        self._held.clear()

    def _count(self, hits: int, misses: int) -> None:
        with self._lock:
            self._hits += hits
            self._misses += misses

    @property
    def bytes(self) -> int:
        return self._held.size

    @property
    def hits(self) -> int:
        return self._hits

    @property
    def misses(self) -> int:
        return self._misses
