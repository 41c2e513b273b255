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
from typing import cast

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
            return list(self._make(texts, tokenize))
        found = [None if entry is None else entry[1] for entry in self._held.get_many(texts)]
        missing = [text for text, ids in zip(texts, found) if ids is None]
        self._count(len(texts) - len(missing), 0)
        if not missing:
            return cast(list[Sequence[int]], found)
        if len(missing) == len(texts):
            return list(self._make(missing, tokenize))
        made = iter(self._make(missing, tokenize))
        return [next(made) if ids is None else ids for ids in found]

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

    def _make(self, texts: Sequence[str], tokenize: Callable[[list[str]], list[list[int]]]) -> list[Ids]:
        """Each text's ids through one `tokenize` call, then held (counted as misses). A text
        repeated among `texts` (a title twice in one call) is tokenized once."""
        distinct = list(dict.fromkeys(texts))
        made = [tuple(ids) for ids in tokenize(distinct)]
        if self.capacity_bytes:
            self._held.put_many(
                (text, (sys.getsizeof(text) + BYTES_PER_TOKEN * len(ids) + ENTRY_OVERHEAD, ids))
                for text, ids in zip(distinct, made))
            self._count(0, len(texts))
        if len(distinct) == len(texts):
            return made
        by_text = dict(zip(distinct, made))
        return [by_text[text] for text in texts]

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
