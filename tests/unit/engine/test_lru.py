"""The one LRU: bounded by entries or by size, least recent evicted first, safe across threads."""

from __future__ import annotations

import threading

from lychee_grpc.engine.util.lru import LRU


def test_entry_bound_evicts_the_least_recently_used():
    lru: LRU[str, int] = LRU(max_items=2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # "b" is now the least recent
    lru.put("c", 3)
    assert lru.keys() == ["a", "c"] and lru.get("b") is None


def test_size_bound_counts_sizes_and_refuses_what_can_never_fit():
    lru: LRU[str, bytes] = LRU(max_size=10, size_of=len)
    lru.put("a", b"xxxx")
    lru.put("b", b"yyyy")
    lru.put("a", b"zz")  # replacing an entry frees its old size
    assert lru.size == 6
    lru.put("c", b"wwwww")
    assert lru.keys() == ["a", "c"] and lru.size == 7
    lru.put("huge", b"h" * 11)
    assert "huge" not in lru and lru.size == 7
    lru.clear()
    assert len(lru) == 0 and lru.size == 0


def test_concurrent_puts_keep_the_size_account_exact():
    lru: LRU[int, bytes] = LRU(max_size=1000, size_of=len)

    def work(base: int) -> None:
        for i in range(2000):
            lru.put(base + i % 300, b"x" * (i % 7 + 1))

    threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lru.size == sum(len(lru.get(k) or b"") for k in lru.keys()) <= 1000


def test_many_at_once_behave_as_one_at_a_time():
    one: LRU[str, bytes] = LRU(max_size=10, size_of=len)
    many: LRU[str, bytes] = LRU(max_size=10, size_of=len)
    entries = [("a", b"aaa"), ("b", b"bb"), ("huge", b"h" * 11), ("c", b"cccc"), ("a", b"a")]
    for key, value in entries:
        one.put(key, value)
    many.put_many(entries)
    assert many.keys() == one.keys() == ["b", "c", "a"] and many.size == one.size == 7
    assert many.get_many(["b", "zz", "c"]) == [b"bb", None, b"cccc"]
    assert many.keys() == ["a", "b", "c"]  # the ones found are the most recent, in the order asked
    many.put_many([("d", b"dddddd")])
    assert many.keys() == ["c", "d"] and many.size == 10
