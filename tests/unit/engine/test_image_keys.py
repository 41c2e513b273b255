"""The cheap key of image bytes (the workers' routing and a request's repeated images use it):
equal bytes give equal keys, and a change in length, head or tail gives another."""

from __future__ import annotations

import random

import pytest

from lychee_grpc.engine.prompt.image_files import cheap_key

LONG = random.Random(0).randbytes(200_000)  # a product photo's size


def _changed(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def test_equal_bytes_in_distinct_objects_give_equal_keys():
    copy = bytes(bytearray(LONG))
    assert copy is not LONG
    assert cheap_key(copy) == cheap_key(LONG)
    assert len(cheap_key(LONG)) == 8


@pytest.mark.parametrize("other", [LONG[:-1], LONG + b"\0", LONG[1:] + b"\0"], ids=["shorter", "longer", "shifted"])
def test_a_change_in_length_or_a_shift_gives_another_key(other):
    assert cheap_key(other) != cheap_key(LONG)


@pytest.mark.parametrize("at", [0, 1000, 2047, len(LONG) - 2048, len(LONG) - 1])
def test_a_change_in_the_first_or_last_2_kb_gives_another_key(at):
    assert cheap_key(_changed(LONG, at)) != cheap_key(LONG)


def test_every_byte_of_a_small_image_counts():
    small = random.Random(1).randbytes(3000)
    keys = {cheap_key(_changed(small, at)) for at in range(len(small))}
    assert len(keys) == len(small) and cheap_key(small) not in keys


def test_empty_bytes_have_a_key_of_their_own():
    assert len(cheap_key(b"")) == 8 and cheap_key(b"") != cheap_key(b"\0")


# A change in the middle of a long image may keep the key: users compare in full on a match
# (tests/unit/engine/test_repeated_images.py) or tolerate the collision (the workers' routing).


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1500, 2047, 2048, 2049, 3000, 4096, 200_000])
def test_the_key_reads_the_length_the_first_and_the_last_2_kb_and_nothing_else(size):
    data = LONG[:size]
    middle = bytes(0xFF - b for b in data[2048:-2048])  # every byte past the first and last 2 KB changed
    same_ends = data[:2048] + middle + data[-2048:] if size > 4096 else bytes(bytearray(data))
    assert len(same_ends) == len(data)
    assert cheap_key(same_ends) == cheap_key(data)
    assert (middle != data[2048:-2048]) == (size > 4096)
