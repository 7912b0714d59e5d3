"""A TCP forwarder between Airflow and the emulated AWS API that can go dark for a while.

`outage(seconds)` closes the listening socket and drops open connections, so Airflow's calls
get "connection refused", then listens again on the same port: an EMR API outage as Airflow
sees it, while the cluster (the step runner and the nodes' S3 traffic) carries on.

During the outage the port stays bound, not listening: the kernel refuses connections to it,
and no other process (a parallel test's server, an outgoing connection's ephemeral port) can
take it, which would answer Airflow's calls in the proxy's place.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

log = logging.getLogger(__name__)


class OutageProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._reserved: socket.socket | None = None  # the port, bound but not listening
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.outages = 0  # how many outages were served (tests check one really happened)

    def __enter__(self) -> OutageProxy:
        self._listen()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._go_dark()
        if self._reserved is not None:
            self._reserved.close()

    def _listen(self) -> None:
        listener = self._reserved or self._bind()
        self._reserved = None
        listener.listen(64)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _bind(self) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        return sock

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by an outage or at exit
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # went dark while connecting: drop it too
                    client.close()
                    upstream.close()
                    return
                self._connections.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with self._lock:
                    self._connections.discard(sock)
                # shutdown() first: it wakes the other direction's thread, blocked in recv() on
                # the same socket; close() alone would not, and once the number of the closed
                # file is reused by a new connection, that thread would read the new one's data.
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def _go_dark(self) -> None:
        # Under the lock, so that a connection being accepted right now is either in the set
        # closed below or sees the listener gone and closes itself (see _accept).
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = list(self._connections), set()
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave the
            # kernel socket open (and accepting) under it. Open connections are closed too:
            # botocore keeps connections alive, and would not notice a closed listener.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass
        if not self._closed.is_set() and self._reserved is None:
            self._reserved = self._bind()

    def outage(self, seconds: float) -> None:
        """Refuse every connection for `seconds` (blocks), then serve again on the same port."""
        log.warning("emr box: AWS API unreachable from Airflow for %.0f s", seconds)
        self._go_dark()
        self.outages += 1
        time.sleep(seconds)
        if not self._closed.is_set():
            self._listen()
            log.warning("emr box: AWS API reachable again")

    def outage_in_background(self, seconds: float, after: float = 0.0) -> threading.Thread:
        def run() -> None:
            time.sleep(after)
            self.outage(seconds)

        thread = threading.Thread(target=run, name="emr-box-outage", daemon=True)
        thread.start()
        return thread
