"""How the page server answers from a kept page: the request line, the head, the banner.

Pure functions over bytes, so the rules are unit-tested without sockets; lean
(``time`` only) like the page server that uses them.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Only the request line matters; the page server reads heads up to 8 KiB.
MAX_LINE = 8 * 1024


def request_target(head: bytes | bytearray) -> tuple[str, str | None]:
    """(method, origin-form target) of a request head; an absolute-form target loses its scheme and host."""
    line = bytes(head[:MAX_LINE]).split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return "", None
    method, target = parts[0].decode("latin-1"), parts[1].decode("latin-1")
    for scheme in ("http://", "https://"):
        if target.lower().startswith(scheme):
            rest = target[len(scheme):]
            target = "/" + rest.partition("/")[2] if "/" in rest else "/"
    return method, target


def copy_head(page: Any, extra: int, now: float | None = None) -> bytes:
    """The head of a 200 answered from a kept page: its type, its length (plus ``extra``), its Age."""
    age = max(0, int((time.time() if now is None else now) - page.fetched))
    ctype = "".join(c for c in page.content_type if c >= " " and c != "\x7f")[:200]  # no header splitting
    return ("HTTP/1.1 200 OK\r\n"
            f"Content-Type: {ctype}\r\n"
            f"Content-Length: {page.size + extra}\r\n"
            f"Age: {age}\r\n"
            "Cache-Control: no-store\r\n"
            "X-Offline-Copy: 1\r\n"
            "Connection: close\r\n\r\n").encode("latin-1", "replace")


def banner(fetched: float, now: float | None = None) -> bytes:
    """The note appended to a kept HTML page (after its end, fixed at the top of the window: the copy
    itself is streamed untouched)."""
    now = time.time() if now is None else now
    when = time.strftime("%H:%M UTC" if now - fetched < 20 * 3600 else "%d %b %H:%M UTC", time.gmtime(fetched))
    return ('\n<div role="status" style="position:fixed;top:0;left:0;right:0;z-index:2147483647;margin:0;'
            'padding:4px 8px;background:#fff3cd;color:#333;font:14px/1.4 sans-serif;text-align:center;'
            f'border-bottom:1px solid #d9c48a">A copy from {when}; the live site is back soon.</div>\n'
            ).encode("ascii")
