"""How a request's documents are spread over the workers (no processes: the routing alone)."""

from __future__ import annotations

import random

import numpy as np

from lychee_grpc.engine.types import Document, ImagePart, Picture, TextPart
from lychee_grpc.workers.routing import Router, guess_tokens


def image_doc(i: int, seed: int = 0, title_words: int = 6) -> Document:
    rng = random.Random(f"{seed}-{i}")
    data = rng.randbytes(3000 + rng.randrange(2000))
    return Document(str(i), (ImagePart(data), TextPart(" ".join(["word"] * title_words))))


def text_doc(i: int, chars: int) -> Document:
    return Document(str(i), (TextPart("x" * chars),))


def tokens(items) -> int:
    return sum(guess_tokens(doc) for _, doc in items)


def test_a_cold_image_request_is_split_evenly_over_two_idle_workers():
    for seed in range(20):  # before: split by the images' hashes, 54/46 and worse
        items = [(i, image_doc(i, seed)) for i in range(100)]
        out = Router(16).assign(items, {"a": 0, "b": 0})
        assert sorted(len(v) for v in out.values()) == [50, 50], seed


def test_shares_of_uneven_texts_end_within_one_document():
    rng = random.Random(1)
    items = [(i, text_doc(i, rng.randint(100, 900))) for i in range(100)]
    out = Router(16).assign(items, {"a": 0, "b": 0, "c": 0})
    loads = [tokens(v) for v in out.values()]
    assert len(loads) == 3 and max(loads) - min(loads) <= max(tokens([it]) for it in items)


def test_each_workers_documents_keep_the_requests_order_and_none_is_lost():
    items = [(i, text_doc(i, 30 + 7 * i)) for i in range(64)]
    out = Router(16).assign(items, {"a": 0, "b": 0})
    for chosen in out.values():
        assert [i for i, _ in chosen] == sorted(i for i, _ in chosen)
    assert sorted(i for chosen in out.values() for i, _ in chosen) == list(range(64))


def test_documents_sharing_an_image_stay_on_one_worker():
    shared = image_doc(0, seed=7)
    items = [(i, Document(str(i), (shared.parts[0], TextPart(f"variant {i}")))) for i in range(10)]
    items += [(10 + i, image_doc(10 + i, seed=8)) for i in range(40)]
    out = Router(16).assign(items, {"a": 0, "b": 0})
    holders = [w for w, chosen in out.items() if any(i < 10 for i, _ in chosen)]
    assert len(holders) == 1 and sum(i < 10 for i, _ in out[holders[0]]) == 10


def test_a_repeated_request_sends_its_images_where_they_went_before():
    router = Router(16)
    items = [(i, image_doc(i, seed=3)) for i in range(100)]
    first = router.assign(items, {"a": 0, "b": 0})
    again = router.assign(items, {"a": 0, "b": 0})
    home = {i: w for w, chosen in first.items() for i, _ in chosen}
    same = sum(home[i] == w for w, chosen in again.items() for i, _ in chosen)
    assert same >= 85  # the affinity gives way only past a slack of 1/8 of a share
    assert all(len(chosen) >= 40 for chosen in again.values())


def test_an_images_home_is_left_when_it_is_much_busier():
    router = Router(16)
    items = [(i, image_doc(i, seed=4)) for i in range(32)]
    router.assign(items, {"a": 0, "b": 10**9})  # a 32-document request on idle a and busy b: one share
    out = router.assign(items, {"a": 10**6, "b": 0})  # now a is the busy one
    assert list(out) == ["b"]


def test_the_least_loaded_worker_takes_a_small_request_whole():
    items = [(i, text_doc(i, 200)) for i in range(20)]  # under two shares of 16
    assert list(Router(16).assign(items, {"a": 5000, "b": 100, "c": 900})) == ["b"]


def test_a_busy_worker_gets_the_smaller_share():
    items = [(i, text_doc(i, 300)) for i in range(100)]
    out = Router(16).assign(items, {"a": 0, "b": tokens(items) // 2})
    assert len(out["a"]) > len(out["b"])
    assert abs(tokens(out["a"]) - (tokens(out["b"]) + tokens(items) // 2)) <= tokens(items[:1])


def test_a_message_without_documents_opens_the_least_loaded_worker_only():
    assert Router(16).assign([], {"a": 7, "b": 3}) == {"b": []}


def test_bytes_given_with_their_decoded_pixels_go_where_the_bytes_went():
    router = Router(16)
    items = [(i, image_doc(i, seed=5)) for i in range(64)]
    first = router.assign(items, {"a": 0, "b": 0})
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    decoded = [(i, Document(doc.id, (ImagePart(doc.parts[0].data, picture=Picture.decoded(pixels, bytes(16))),
                                     doc.parts[1]))) for i, doc in items]
    again = router.assign(decoded, {"a": 0, "b": 0})
    home = {i: w for w, chosen in first.items() for i, _ in chosen}
    assert sum(home[i] == w for w, chosen in again.items() for i, _ in chosen) >= 56
