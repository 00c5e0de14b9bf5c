"""Loopback networking helpers shared by the backends, the MLflow test server, benchmarks and the tests."""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    """Static files of `server.root`; each request's method and path appended to `server.requests`."""

    server: StaticServer

    def __init__(self, request: Any, client_address: Any, server: StaticServer):
        super().__init__(request, client_address, server, directory=str(server.root))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        with self.server.lock:
            self.server.requests.append((self.command, self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # the request log above is the record; nothing on stderr


class StaticServer(http.server.ThreadingHTTPServer):
    """A static HTTP server of folder `root` on 127.0.0.1 (a free port), in a thread, with a request log:
    what a shard folder published by `python -m http.server` looks like, for tests and benchmarks.

        with StaticServer(folder) as server:
            server.url  # http://127.0.0.1:PORT
            server.requests  # [(method, path, status), ...]
    """

    daemon_threads = True

    def __init__(self, root: str | Path, handler: type[http.server.BaseHTTPRequestHandler] = _QuietFiles):
        self.root = Path(root)
        self.requests: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> StaticServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()
