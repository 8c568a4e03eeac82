"""A TCP fault proxy for the test S3 server: passes bytes through, or resets, stalls or refuses connections.

    with FaultProxy(("127.0.0.1", s3_port)) as proxy:    # http://127.0.0.1:{proxy.port} is the endpoint
        proxy.mode = "reset"     # every new and open connection is reset (RST)
        proxy.mode = "stall"     # bytes stop flowing both ways; connections stay open
        proxy.mode = "down"      # a full outage: open connections are cut, new ones closed at once
        proxy.mode = "pass"
        proxy.outage(3.0, "down")  # down for 3 s from now, then pass

``cut_after`` (bytes from the client) resets a connection in the middle of an upload.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


class FaultProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode = "pass"
        self.cut_after: int | None = None
        self._until: float | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.connections = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def outage(self, seconds: float, mode: str = "down") -> None:
        """``mode`` for ``seconds`` from now, then back to passing bytes."""
        self.mode, self._until = mode, time.monotonic() + seconds
        if mode in ("reset", "down"):
            self._reset_all()

    def _current(self) -> str:
        if self._until is not None and time.monotonic() >= self._until:
            self.mode, self._until = "pass", None
        return self.mode

    def _reset_all(self) -> None:
        with self._lock:
            for conn in list(self._conns):
                _reset(conn)

    def start(self) -> FaultProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            if self._current() in ("down", "reset"):
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns |= {client, upstream}
            sent = [0]
            threading.Thread(target=self._pipe, args=(client, upstream, sent), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, sent: list[int] | None) -> None:
        src.settimeout(0.2)
        try:
            while not self._stop.is_set():
                mode = self._current()
                if mode == "stall":
                    time.sleep(0.05)
                    continue
                if mode in ("reset", "down"):
                    break
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if sent is not None and self.cut_after is not None:
                    sent[0] += len(data)
                    if sent[0] > self.cut_after:
                        self.cut_after = None
                        break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _reset(s)
            with self._lock:
                self._conns -= {src, dst}

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._reset_all()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed peer or a dropped route looks."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
