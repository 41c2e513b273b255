"""Which worker runs which of a request's documents.

A request goes whole to the worker with the fewest queued tokens, unless it is large enough to
split (`split_min_documents` per share): then its documents are spread over the least loaded
workers so that every share ends at about the same time. Documents sharing an image stay
together. An image routed recently keeps going to the same worker (its vision cache likely holds
the tower's output) while that worker is not much more loaded than the least loaded one; a new
image carries no preference, so a cold request is split evenly rather than by its images' hashes
(which left one GPU with 54 of 100 documents and a second pass of its LM on the H200s).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Generic, TypeVar

from ..engine.api import IndexedDocument
from ..engine.prompt.image_files import cheap_key
from ..engine.types import Document, ImagePart, TextPart
from ..engine.util.lru import LRU

IMAGE_TOKENS_GUESS = 300  # a product photo after the default resize, before the worker says
AFFINITY_SLACK = 0.125  # how much busier than the least loaded worker an image's home may be, per share
HOMES_REMEMBERED = 65536  # image keys whose last worker is remembered

W = TypeVar("W", bound=Hashable)
Item = IndexedDocument


def guess_tokens(doc: Document) -> int:
    """A document's tokens before its worker has tokenized it (the worker's count replaces it)."""
    return sum(len(part.text) // 3 + 1 if isinstance(part, TextPart) else IMAGE_TOKENS_GUESS for part in doc.parts)


def image_key(doc: Document) -> bytes | None:
    """A key for the document's first image: `cheap_key` of its bytes (not their whole digest,
    which held the event loop), or its picture's digest where it has no bytes, 8 bytes either way;
    a collision costs only a vision-cache miss. Bytes given with their decoded pixels (Explain's
    photo) go where those bytes alone would."""
    for part in doc.parts:
        if isinstance(part, ImagePart):
            return cheap_key(part.data) if part.data or part.picture is None else part.picture.key[:8]
    return None


class Router(Generic[W]):
    """Splits requests over workers (of type W) by their queued tokens, remembering where images went."""

    def __init__(self, split_min_documents: int = 16, homes: int = HOMES_REMEMBERED):
        self.split_min_documents = max(1, split_min_documents)
        self._homes: LRU[bytes, W] = LRU(max_items=homes)

    def assign(self, items: Sequence[Item], loads: dict[W, int]) -> dict[W, list[Item]]:
        """`loads`: the live workers and their queued tokens. Each worker's items keep the
        request's order."""
        if not loads:
            raise ValueError("no worker to assign to")
        ranked = sorted(loads, key=lambda worker: loads[worker])
        shares = max(1, min(len(ranked), len(items) // self.split_min_documents))
        candidates = ranked[:shares]
        groups: dict[Hashable, list[Item]] = {}
        keys: dict[Hashable, bytes | None] = {}
        for index, doc in items:
            key = image_key(doc)
            group = key if key is not None else ("document", index)
            groups.setdefault(group, []).append((index, doc))
            keys[group] = key
        if shares == 1:  # whole, even when empty (a stream's message may hold no documents)
            placed = dict.fromkeys(groups, candidates[0])
            out: dict[W, list[Item]] = {candidates[0]: []}
        else:
            placed = self._spread(groups, keys, {worker: loads[worker] for worker in candidates})
            out = {}
        for group, worker in placed.items():
            out.setdefault(worker, []).extend(groups[group])
            key = keys[group]
            if key is not None:
                self._homes.put(key, worker)
        for chosen in out.values():
            chosen.sort(key=lambda item: item[0])
        return out

    def _spread(self, groups: dict[Hashable, list[Item]], keys: dict[Hashable, bytes | None],
                now: dict[W, int]) -> dict[Hashable, W]:
        """Largest group first, each to the least loaded worker, so the shares end within one
        document; an image's remembered worker instead while it is within the slack."""
        sizes = {group: sum(guess_tokens(doc) for _, doc in members) for group, members in groups.items()}
        slack = AFFINITY_SLACK * sum(sizes.values()) / len(now)
        placed: dict[Hashable, W] = {}
        for group in sorted(groups, key=lambda g: -sizes[g]):
            target = min(now, key=lambda worker: now[worker])
            key = keys[group]
            home = self._homes.get(key) if key is not None else None
            if home is not None and home in now and now[home] <= now[target] + slack:
                target = home
            placed[group] = target
            now[target] += sizes[group]
        return placed
