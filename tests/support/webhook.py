"""A real HTTP listener that receives alarm webhooks (the ``webhook`` fixture starts one)."""

from __future__ import annotations

import json
import time

from tests.support.http_listener import LocalHttpListener, QuietHandler


class WebhookSink(LocalHttpListener):
    """http.server on 127.0.0.1, ephemeral port; records each POSTed JSON body.

    ``status`` is the answer it gives (200 by default; 500 to simulate a failing receiver).
    """

    def __init__(self, status: int = 200):
        self.status = status
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        sink = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(length)
                sink.bodies.append(json.loads(data))
                sink.headers.append(dict(self.headers))
                self.send_response(sink.status)
                self.end_headers()
                self.wfile.write(b"ok")

        super().__init__(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self) -> list[str]:
        return [b["event"] for b in self.bodies]

    def wait_for(self, n: int, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.bodies

