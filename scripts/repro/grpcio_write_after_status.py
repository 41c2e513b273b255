"""grpcio alone, no lychee code: its asyncio client reports INTERNAL "Internal error from Core"
when a message it writes meets a call the server has already ended, instead of the status the
server sent (RELIABILITY.md, "Junk on a stream").

    python scripts/repro/grpcio_write_after_status.py

A server process whose stream handler aborts INVALID_ARGUMENT on the first message; 600 streams of
one, two or three messages, eight at a time. Seen with grpcio 1.85.3 on 2 cores: every one-message
stream INVALID_ARGUMENT, 25 to 118 of the 400 two- and three-message streams INTERNAL (more when
the machine is busier).
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing

import grpc


async def handler(request_iterator, context):
    await context.send_initial_metadata((("x-demo", "1"),))
    async for _ in request_iterator:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad message")


def serve(ports: multiprocessing.Queue) -> None:
    async def run() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "demo.Svc", {"Stream": grpc.stream_stream_rpc_method_handler(handler)})])
        ports.put(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await server.wait_for_termination()

    asyncio.run(run())


async def main(port: int) -> None:
    codes: collections.Counter[str] = collections.Counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream("/demo.Svc/Stream")
        gate = asyncio.Semaphore(8)

        async def one(n: int) -> None:
            async def messages():
                for _ in range(n):
                    yield b"x" * 10

            async with gate:
                try:
                    async for _ in call(messages(), timeout=10):
                        pass
                except grpc.RpcError as err:
                    codes[f"{n} message(s): {err.code().name}: {err.details()}"] += 1

        await asyncio.gather(*(one(1 + k % 3) for k in range(600)))
    for line, count in sorted(codes.items()):
        print(f"{count:4d}  {line}")
    print("grpcio", grpc.__version__)


if __name__ == "__main__":
    ports: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(ports,), daemon=True)
    server.start()
    try:
        asyncio.run(main(ports.get(timeout=60)))
    finally:
        server.kill()
