"""`make demo`'s script stops its server however it is ended: a SIGTERM or a SIGHUP to the script
(a `kill`, a closed terminal) frees the server's ports as Ctrl-C does, so the next `make demo`
finds them free."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _free(port: int) -> bool:
    # As the demo checks its ports, and as servers bind them: the closed connections' TIME_WAIT
    # does not count.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_kept_demo_stops_its_server_and_frees_its_ports(tiny_model_dir, sig):
    ports = [free_port(), free_port(), free_port()]
    demo = subprocess.Popen(
        [sys.executable, "scripts/demo.py", "--model", tiny_model_dir, "--port", str(ports[0]),
         "--http-port", str(ports[1]), "--metrics-port", str(ports[2]), "--keep"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)  # its group, for the clean-up
    try:
        assert demo.stdout is not None
        seen = []
        for line in demo.stdout:
            seen.append(line)
            if line.startswith("Web console: open"):
                break
        else:
            pytest.fail("the demo never kept its server: " + "".join(seen[-20:]))
        assert not _free(ports[0])
        demo.send_signal(sig)
        rest, _ = demo.communicate(timeout=60)
        assert demo.returncode == 128 + sig
        assert "server stopped (exit 0)" in rest
        deadline = time.monotonic() + 10
        while not all(_free(port) for port in ports) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_free(port) for port in ports), "the demo's server still holds a port"
    finally:
        # The demo and a server it may have left behind (the signal goes to the demo alone above).
        try:
            os.killpg(demo.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        demo.wait()
