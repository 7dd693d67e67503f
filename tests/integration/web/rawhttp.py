"""HTTP/1.1 by hand over a socket: header values and bodies as raw bytes, which client libraries
refuse to send (a non-UTF-8 byte in a header, a body that lies about its encoding)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(port: int, method: str, path: str, body: bytes = b"", *,
            headers: dict[str, bytes] | None = None, timeout_s: float = 30) -> Answer:
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close",
            f"Content-Length: {len(body)}".encode()]
    head += [name.encode() + b": " + value for name, value in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status_line, raw_headers, payload = _head(received)
    while 100 <= int(status_line.split()[1]) < 200:  # an interim answer (100 Continue): read on
        status_line, raw_headers, payload = _head(payload)
    fields = dict(line.decode("latin-1").split(": ", 1) for line in raw_headers.split(b"\r\n")
                  if b": " in line)
    return Answer(int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()},
                  payload)


def _head(received: bytes) -> tuple[bytes, bytes, bytes]:
    """An answer's status line, its header block and what follows the blank line."""
    head, _, payload = received.partition(b"\r\n\r\n")
    status_line, _, raw_headers = head.partition(b"\r\n")
    return status_line, raw_headers, payload
