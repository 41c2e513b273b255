"""The pair-score cache: a (query, document) pair scored once is answered from memory, exactly as
it was stored, for as long as it stays in the cache.

The key is a 128-bit digest (SHA-256 of the model's and the request's share, then BLAKE2b
with the document) of everything that can change a score:
- the model: its id or path, the fingerprint of its weight files (`EngineInfo.weights`), dtype,
  attention implementation, the image pixel bounds before the vision tower, the batch-invariant
  mode;
- the request: truncation mode and the effective token limit per document, the effective
  instruction (the server's default when the request leaves it empty), the query's parts;
- the document's parts: each text, and each image by a SHA-256 of its bytes.
A document's id, its position and the request's other options (top_n, min_score, ...) are not in
it: they never change a score.

The value is what the engine answered: the logit, the score, the prompt's token count and
whether the text was truncated. A hit returns those same floats (bit-identical to the answer the
engine gave when it was stored; with --batch-invariant also to a fresh computation).

Memory: bounded by `capacity_bytes`, least recently used first out; each entry counts
ENTRY_BYTES (the key, the packed value and an ordered dict's slot: measured 184-282 bytes per
entry on CPython 3.11 while entries are added and evicted; tests/unit/service/test_score_cache.py
checks the bound with tracemalloc). Only the event loop's thread touches it.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from ..engine.api import EngineInfo
from ..engine.types import Document, Part, Query, TextPart

ENTRY_BYTES = 320
KEY_BYTES = 16
_VALUE = struct.Struct("<ddI?")  # logit, score, prompt tokens, truncated


@dataclass(frozen=True)
class StoredScore:
    logit: float
    score: float
    prompt_tokens: int
    truncated: bool


@dataclass(frozen=True)
class ScoreCacheStats:
    """A snapshot, for metrics and model info. Hits and misses count lookups of documents;
    `coalesced` counts documents answered by the same pair queued or running for another request,
    `deduplicated` documents answered by an identical document earlier in the same request."""

    entries: int = 0
    bytes: int = 0
    capacity_bytes: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    coalesced: int = 0
    deduplicated: int = 0


class ScoreCache:
    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = max(0, capacity_bytes)
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes >= ENTRY_BYTES

    @property
    def bytes(self) -> int:
        return len(self._entries) * ENTRY_BYTES

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> StoredScore | None:
        """The stored score (now the most recently used), counted as a hit or a miss; None, and
        nothing counted, when the cache is off."""
        if not self.enabled:
            return None
        packed = self._entries.get(key)
        if packed is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return StoredScore(*_VALUE.unpack(packed))

    def put(self, key: bytes, value: StoredScore) -> None:
        if not self.enabled:
            return
        self._entries[key] = _VALUE.pack(value.logit, value.score, value.prompt_tokens, value.truncated)
        self._entries.move_to_end(key)
        while len(self._entries) * ENTRY_BYTES > self.capacity_bytes:
            self._entries.popitem(last=False)
            self.evictions += 1


def model_key(info: EngineInfo) -> bytes:
    """The model's share of every key (EngineInfo: its checkpoint, weights, dtype, attention,
    image bounds, batch-invariant mode)."""
    fields = (info.model, info.weights, info.dtype, info.attention, info.limits.min_image_model_pixels,
              info.limits.max_image_model_pixels, info.batch_invariant)
    return hashlib.sha256("\0".join(map(str, fields)).encode("utf-8", "surrogatepass")).digest()


def _encoded(parts: Sequence[Part]) -> bytes:
    """The parts as bytes, unambiguously: a count, then per part a tag, a length and its bytes
    (an image by its SHA-256, or given as pixels, by their digest: another tag)."""
    out = [len(parts).to_bytes(4, "little")]
    for part in parts:
        if isinstance(part, TextPart):
            data = part.text.encode("utf-8", "surrogatepass")
            out += (b"T", len(data).to_bytes(8, "little"), data)
        elif part.picture is not None:
            out += (b"P", part.picture.key)
        else:
            out += (b"I", part.digest)  # the engine's content key reads the same digest
    return b"".join(out)


_ONE_TEXT = (1).to_bytes(4, "little") + b"T"  # _encoded's count and tag for one text part


class PairKeys:
    """The keys of one request's documents: the model's and the request's share hashed once."""

    def __init__(self, model: bytes, truncation: str, max_tokens_per_document: int, instruction: str, query: Query):
        text = instruction.encode("utf-8", "surrogatepass")
        self._base = hashlib.sha256(b"".join((
            model, f"{truncation}\0{max_tokens_per_document}\0".encode(), len(text).to_bytes(8, "little"), text,
            _encoded(query.parts)))).digest()

    def of(self, document: Document) -> bytes:
        parts = document.parts
        if len(parts) == 1 and isinstance(parts[0], TextPart):  # a title: _encoded's bytes, built directly
            data = parts[0].text.encode("utf-8", "surrogatepass")
            return hashlib.blake2b(b"".join((self._base, _ONE_TEXT, len(data).to_bytes(8, "little"), data)),
                                   digest_size=KEY_BYTES).digest()
        return hashlib.blake2b(self._base + _encoded(document.parts), digest_size=KEY_BYTES).digest()
