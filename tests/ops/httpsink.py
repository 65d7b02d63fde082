"""Local HTTP receivers for tests: one that records, one that answers 500, one that is slow."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Sink:
    """An HTTP server on 127.0.0.1 (``mode``: ok, error (500), reject (400), slow (sleeps ``delay_s``))."""

    def __init__(self, mode: str = "ok", delay_s: float = 0.0, port: int = 0) -> None:
        self.mode = mode
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with sink.lock:
                    sink.requests.append({"at": time.monotonic(), "path": self.path, "body": body,
                                          "headers": {k.lower(): v for k, v in self.headers.items()}})
                if sink.mode == "slow":
                    time.sleep(sink.delay_s)
                code = {"error": 500, "reject": 400}.get(sink.mode, 200)
                try:
                    self.send_response(code)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def docs(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(r["body"]) for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
