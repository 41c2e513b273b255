"""Documents of one request that begin alike: their common head is computed once.

A token's keys and values depend only on the tokens before it (causal attention). When several
documents of a batch, after the request's shared prefix, begin with the same tokens and the same
images at the same places, that head's keys and values are the same for each of them. The head
then runs once, as an unscored sequence of the batch, and each document's remaining tokens (its
tail) attend to [prefix ; head ; tail]: the keys and values the whole document would have seen,
in the same order. Explain's word fragments of a document whose image comes first all share that
image this way; so do a product's variants sent with one photo and different titles.

Groups are found by sorting the documents' token signatures (ids, with each image's pad tokens
standing for that image): documents sharing a head are then neighbours. Runs of neighbours whose
common start is at least MIN_HEAD tokens are cut into the groups that save the most tokens. The
scheduler looks again among each group's tails, which read one context (their head): heads nest,
down to MIN_NESTED_HEAD tokens.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .prompt.prepared import EncodedImage, Segment

# A shared head below this many tokens saves less than its extra packed sequence costs. Its first
# MIN_HEAD ids are also the quick test that keeps a batch of unrelated documents out of the search.
MIN_HEAD = 32
# Among a head's tails (already one group, read after one context), shorter heads pay: Explain's
# word variants, each a title with one word removed, share the words before it. Nested heads of
# 8 tokens or more compute ~300 fewer of its ~6,700 LM rows than 32 or more did (bench/RESULTS.md).
MIN_NESTED_HEAD = 8


@dataclass(frozen=True)
class SharedHead:
    """`length` leading tokens that the documents `members` (indices into the grouped segments)
    have in common."""

    length: int
    members: tuple[int, ...]


def signatures(segments: Sequence[Segment], image_token_id: int) -> list[np.ndarray]:
    """Each segment's ids, its image pad tokens replaced by -(1 + a number for that image's key):
    equal signatures over a span mean equal tokens and equal pictures."""
    keys: dict[bytes, int] = {}
    out = []
    for seg in segments:
        sig = seg.ids.numpy().astype(np.int64, copy=True)
        if seg.images:
            pads = np.flatnonzero(sig == image_token_id)
            at = 0
            for im in seg.images:
                sig[pads[at : at + im.tokens]] = -1 - keys.setdefault(im.key, len(keys))
                at += im.tokens
        out.append(sig)
    return out


def _common(a: np.ndarray, b: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> int:
    """Leading tokens two documents share: signatures and positions (M-RoPE's three rows)."""
    n = min(a.size, b.size)
    same = (a[:n] == b[:n]) & (pa[:, :n] == pb[:, :n]).all(axis=0)
    differ = np.flatnonzero(~same)
    return int(differ[0]) if differ.size else n


def shared_heads(segments: Sequence[Segment], image_token_id: int, min_head: int = MIN_HEAD) -> list[SharedHead]:
    """Groups of two or more of `segments` (documents after the same context) with a common head
    of at least `min_head` tokens, chosen to save the most tokens. Every member keeps at least
    its last token as its tail (it is scored there), and a head never ends inside an image."""
    # Most batches share nothing: documents whose first `min_head` ids (and pictures among them)
    # match no other's are out.
    by_start: dict[tuple[bytes, tuple[bytes, ...]], list[int]] = {}
    for i, seg in enumerate(segments):
        if len(seg) > min_head:
            by_start.setdefault(_start(seg, min_head, image_token_id), []).append(i)
    chosen = sorted(i for group in by_start.values() if len(group) > 1 for i in group)
    if len(chosen) < 2:
        return []
    if len(chosen) < len(segments):
        return [SharedHead(h.length, tuple(chosen[m] for m in h.members))
                for h in shared_heads([segments[i] for i in chosen], image_token_id, min_head)]
    sigs = signatures(segments, image_token_id)
    positions = [seg.positions.numpy() for seg in segments]
    order = sorted(range(len(segments)), key=lambda i: sigs[i].tobytes())
    # What each neighbour shares with the next; a run of neighbours shares the least of theirs.
    caps = [_shareable(sigs[a], sigs[b], positions[a], positions[b]) for a, b in itertools.pairwise(order)]
    groups: list[SharedHead] = []
    start = 0
    for end in range(len(order)):
        if end == len(order) - 1 or caps[end] < min_head:  # a run of neighbours ends at `end`
            if end > start:
                groups += [SharedHead(length, tuple(sorted(order[start + i] for i in members)))
                           for length, members in _best_split(caps[start:end], min_head)]
            start = end + 1
    return groups


def common_head(a: Segment, b: Segment, image_token_id: int, min_head: int = MIN_HEAD) -> int:
    """The head two documents would share (0 when under `min_head`): the scheduler's estimate
    of a document's rows in a batch beside the previous one of its request. Cheap when their
    first `min_head` tokens differ, as most documents' do."""
    if min(len(a), len(b)) <= min_head or _start(a, min_head, image_token_id) != _start(b, min_head, image_token_id):
        return 0
    sa, sb = signatures([a, b], image_token_id)
    head = _shareable(sa, sb, a.positions.numpy(), b.positions.numpy())
    return head if head >= min_head else 0


def _start(segment: Segment, tokens: int, image_token_id: int) -> tuple[bytes, tuple[bytes, ...]]:
    """The segment's first ids and the keys of the pictures whose pads are among them, to compare:
    no two documents share a head longer than `tokens` unless these are equal. A request's image
    candidates begin with the same ids (the template, then their pads) and differ in their
    pictures: told apart here, they cost no signatures (~2 ms of the GPU thread's time before a
    100-image batch could launch, and as much in forming it; bench/RESULTS.md, "Warm image
    documents")."""
    # NumPy's view, then its slice: a torch slice first cost ~2 us more per call, and this runs for
    # every document of a batch twice (a T100 batch took 2.4 ms to form on the H200 host).
    ids = segment.ids.numpy()[:tokens]
    if not segment.images:
        return ids.tobytes(), ()
    pads = int(np.count_nonzero(ids == image_token_id))
    keys: list[bytes] = []
    covered = 0
    for image in segment.images:
        if covered >= pads:
            break
        keys.append(image.key)
        covered += image.tokens
    return ids.tobytes(), tuple(keys)


def _shareable(a: np.ndarray, b: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> int:
    """The head two documents (signatures, positions) can share: their common start, leaving
    each at least its last token and never ending inside an image."""
    common = min(_common(a, b, pa, pb), a.size - 1, b.size - 1)
    return min(_boundary(a, common), _boundary(b, common))


def _boundary(sig: np.ndarray, head: int) -> int:
    """`head` moved back to the start of the image whose pads it would end inside (the pads of
    one image share a signature value)."""
    while 0 < head < sig.size and sig[head] < 0 and sig[head - 1] == sig[head]:
        head -= 1
    return head


def _best_split(caps: list[int], min_head: int) -> list[tuple[int, range]]:
    """The run of len(caps) + 1 neighbours cut into groups (head length, member positions) that
    save the most tokens: a group of m members with head h saves (m - 1) * h. A run mixing a
    short common start with a long one (a page's boilerplate, then one photo for some of them)
    is better cut than shared at its shortest."""
    n = len(caps) + 1
    c = np.asarray(caps, dtype=np.int64)
    best = np.zeros(n + 1, dtype=np.int64)  # best[j]: the most saved over the first j members
    start = np.zeros(n + 1, dtype=np.int64)  # where the group ending at member j - 1 starts
    for j in range(1, n + 1):
        best[j], start[j] = best[j - 1], j - 1
        if j >= 2:
            # A group of members i .. j-1 (i <= j-2) shares min(caps[i : j-1]).
            low = np.minimum.accumulate(c[: j - 1][::-1])[::-1]
            i = np.arange(j - 1)
            saved = np.where(low >= min_head, best[i] + (j - 1 - i) * low, -1)
            k = int(np.argmax(saved))
            if saved[k] > best[j]:
                best[j], start[j] = saved[k], k
    out = []
    j = n
    while j > 0:
        i = int(start[j])
        if j - i >= 2:
            out.append((int(c[i : j - 1].min()), range(i, j)))
        j = i
    return out[::-1]


def split(segment: Segment, length: int, image_token_id: int) -> tuple[Segment, Segment]:
    """The segment's first `length` tokens and the rest, each with its own images (an image
    belongs where its pad tokens begin; `shared_heads` never cuts through one)."""
    pads = np.flatnonzero(segment.ids.numpy() == image_token_id)
    head_images: list[EncodedImage] = []
    tail_images: list[EncodedImage] = []
    at = 0
    for im in segment.images:
        (head_images if pads[at] < length else tail_images).append(im)
        at += im.tokens
    head = Segment(ids=segment.ids[:length], positions=segment.positions[:, :length], images=head_images)
    tail = Segment(ids=segment.ids[length:], positions=segment.positions[:, length:], images=tail_images)
    return head, tail
