"""uvicorn on a background thread, for benchmarks and tests (not part of the package): ``with
ThreadedServer(app) as url: ...`` serves ``app`` on a free port until the block ends."""
from __future__ import annotations

import threading
import time

from fastapi import FastAPI


class ThreadedServer:
    """uvicorn on a background thread (tests, benchmarks): ``with ThreadedServer(app) as url: ...``."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
