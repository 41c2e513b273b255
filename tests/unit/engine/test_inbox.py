"""The one-reader inbox jobs and requests deliver scores through: order kept, a reader waits for
the next item and wakes once it is put."""

from __future__ import annotations

import asyncio

from lychee_grpc.engine.util.inbox import Inbox


async def test_items_come_out_in_the_order_they_were_put():
    inbox: Inbox[int] = Inbox()
    for k in range(5):
        inbox.put(k)
    assert [await inbox.get() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert inbox.empty()


async def test_a_waiting_reader_wakes_when_an_item_is_put():
    inbox: Inbox[str] = Inbox()
    reader = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    assert not reader.done()
    inbox.put("a")
    inbox.put("b")
    assert await reader == "a"
    assert await inbox.get() == "b"


async def test_a_cancelled_reader_leaves_the_items_for_the_next():
    inbox: Inbox[int] = Inbox()
    reader = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    inbox.put(7)
    assert await asyncio.wait_for(inbox.get(), 1) == 7


async def test_get_all_hands_over_everything_waiting_in_order_and_waits_when_empty():
    inbox: Inbox[int] = Inbox()
    for i in range(3):
        inbox.put(i)
    assert await inbox.get_all() == [0, 1, 2]
    assert inbox.empty()
    reader = asyncio.ensure_future(inbox.get_all())
    await asyncio.sleep(0)
    assert not reader.done()
    inbox.put(7)
    inbox.put(8)
    assert await asyncio.wait_for(reader, 1) == [7, 8]
