"""uvicorn on the event loop that already runs gRPC: started and stopped by `App`, which owns
the signals (SIGTERM drains both transports together)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from typing import Any

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None]:
        # uvicorn would take SIGTERM/SIGINT for itself; the App drains everything on them instead.
        yield


class HttpServer:
    # ssl_options: uvicorn.Config keywords (security.uvicorn_ssl_options), of several types.
    def __init__(self, app: FastAPI, host: str, port: int, ssl_options: dict[str, Any] | None = None):
        self.app = app
        self.host = host
        self.requested_port = port
        self.ssl_options = ssl_options or {}
        self.port = 0
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def _bind(self) -> socket.socket:
        """Bound here, before serving, so a taken port fails start() and port 0's pick is known."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.requested_port))
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot bind HTTP on {self.host}:{self.requested_port}: {exc.strerror} (--http-port: "
                          "choose another port, or 0 for a free one; --http false turns HTTP off)") from exc
        sock.listen(2048)
        sock.setblocking(False)
        return sock

    async def start(self) -> int:
        sock = self._bind()
        self.port = sock.getsockname()[1]
        # uvicorn's own start and stop lines repeat ours: only its warnings and errors are logged.
        config = uvicorn.Config(self.app, lifespan="off", log_config=None, access_log=False, log_level="warning",
                                timeout_graceful_shutdown=None, **self.ssl_options)
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="lychee-http")
        while not self._server.started:
            if self._task.done():  # failed to start: surface why
                self._task.result()
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        log.info("HTTP (REST API, console at /) listening on %s:%d%s", self.host, self.port,
                 " (TLS)" if self.ssl_options else "")
        return self.port

    async def stop(self, grace: float) -> None:
        """Stops accepting, lets open requests finish within `grace` seconds, then closes."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._server.force_exit = True
            await self._task
        self._server = self._task = None
