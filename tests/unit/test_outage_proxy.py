"""The outage proxy the EMR tests use: dark means refused, and the port stays ours meanwhile."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from launchers.emr_box.proxy import OutageProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))

    def reply(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(64):
                conn.sendall(data)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=reply, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def echo(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(data)
        return conn.recv(64)


def dropped(conn: socket.socket) -> bool:
    """The proxy closed the connection (an orderly close or a reset)."""
    try:
        return conn.recv(64) == b""
    except ConnectionResetError:
        return True


def test_an_outage_refuses_connections_holds_the_port_and_ends(echo_port):
    with OutageProxy(echo_port) as proxy:
        assert echo(proxy.port, b"before") == b"before"
        kept_alive = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        kept_alive.sendall(b"alive")
        assert kept_alive.recv(64) == b"alive"  # piped through the proxy
        outage = threading.Thread(target=proxy.outage, args=(1.5,))
        outage.start()
        time.sleep(0.3)
        assert dropped(kept_alive)  # open connections are dropped, not left hanging
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        # Nobody else can take the port meanwhile (a parallel test's server would answer for us).
        with socket.socket() as intruder, pytest.raises(OSError, match="in use"):
            intruder.bind(("127.0.0.1", proxy.port))
        outage.join()
        assert proxy.outages == 1
        assert echo(proxy.port, b"after") == b"after"
