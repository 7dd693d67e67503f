"""The log stays one JSON object a line, whatever aiohttp or another library logs.

aiohttp's own request errors are a counted line a second, never a traceback per bad request."""

from __future__ import annotations

import json
import subprocess
import sys

SERVE_AND_PROBE = '''
import asyncio, logging, socket
from aiohttp import web
from proxy.config import Settings
from proxy.telemetry import configure_logging
from proxy.web.server import GuardedSite, make_runner

async def main():
    configure_logging(json=True)
    settings = Settings(port=0)
    app = web.Application()
    app.router.add_get("/", lambda request: web.json_response({}))
    runner = make_runner(app, settings)
    await runner.setup()
    site = GuardedSite(runner, settings)
    await site.start()

    def probe():
        for _ in range(20):  # a request whose head is not HTTP/1.1
            with socket.create_connection(("127.0.0.1", site.port)) as sock:
                sock.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 1x\\r\\n\\r\\n")
                while sock.recv(4096):
                    pass
    await asyncio.to_thread(probe)
    try:
        raise ValueError("a library's own failure")
    except ValueError:
        logging.getLogger("some.library").exception("it failed for %s", "a reason")
    await runner.cleanup()

asyncio.run(main())
'''


def test_request_errors_and_library_records_are_json_lines() -> None:
    done = subprocess.run([sys.executable, "-c", SERVE_AND_PROBE], capture_output=True,
                          text=True, timeout=120, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    errors = [line for line in lines if line["event"] == "request_error"]
    assert 1 <= len(errors) <= 2 and errors[0]["error"] == "BadHttpMessage", lines
    assert "Content-Length" not in done.stderr  # the parser's words are not echoed
    library = [line for line in lines if line.get("logger") == "some.library"]
    assert [line["event"] for line in library] == ["it failed for a reason"]
    assert library[0]["level"] == "error" and "ValueError" in library[0]["exception"]
