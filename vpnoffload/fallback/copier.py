"""The copier child: fetch the kept pages from home through the tunnel, so visitors get them while home is down.

Started by the watchdog (:class:`vpnoffload.fallback.copies.CopySchedule`) as
``python -I -S`` with a marshal job on stdin, while the services in it are
forwarded to a healthy home; it lives a few seconds, so ``http.client`` and
``ssl`` never stay resident in the watchdog.

For each kept path of each service it sends ``GET`` with the service's
hostname as ``Host``, no cookies and no credentials, conditional on what it
has (``If-None-Match``/``If-Modified-Since``), over a socket carrying the health
mark (so the fail-fast rules let it through). The rules (:func:`verdict`):

* 200 is kept, 304 renews the copy it has;
* never kept, and a copy kept before is dropped: ``Cache-Control: private`` or
  ``no-store``, ``Set-Cookie``, 401/403/407 or ``WWW-Authenticate``, and a body
  in a ``Content-Encoding`` a visitor may not accept;
* anything else (refused, timed out, 5xx, a redirect, a body larger than the
  room left of ``max_bytes`` for all kept pages together) is a failure and
  keeps the old copy.

Bodies are written to a new file (0600, fsync) and the index is switched
atomically afterwards (:mod:`vpnoffload.fallback.copies`); files the new index
no longer names are removed last.
"""

from __future__ import annotations

import marshal
import os
import sys
import time

from vpnoffload.fallback import copies

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~1 MB in a lean process)
if TYPE_CHECKING:
    import http.client
    from typing import Any

CHUNK = 64 * 1024
#: Ours: what a visitor would send, minus anything personal.
USER_AGENT = "vpnoffload-offline-copy"

KEEP, RENEW, REFUSE, FAIL = "keep", "renew", "refuse", "fail"


def verdict(status: int, headers: list[tuple[str, str]]) -> tuple[str, str]:
    """(KEEP|RENEW|REFUSE|FAIL, reason) for a response head. REFUSE: never keep it (and drop an old copy)."""
    names = {name.lower() for name, _ in headers}
    if status in (401, 403, 407) or "www-authenticate" in names:
        return REFUSE, f"needs authorization (HTTP {status})"
    if "set-cookie" in names:
        return REFUSE, "sets a cookie"
    for name, value in headers:
        if name.lower() == "cache-control":
            for directive in value.split(","):
                token = directive.split("=", 1)[0].strip().lower()
                if token in ("private", "no-store"):
                    return REFUSE, f"Cache-Control: {token}"
        if name.lower() == "content-encoding" and value.strip().lower() not in ("", "identity"):
            return REFUSE, f"Content-Encoding: {value.strip()}"
    if status == 304:
        return RENEW, "not modified"
    if status == 200:
        return KEEP, "ok"
    return FAIL, f"HTTP {status}"


def conditional_headers(entry: dict[str, Any] | None) -> list[tuple[str, str]]:
    """What makes a refresh cheap: the validators of the copy we have."""
    if not entry:
        return []
    out = []
    if entry.get("etag"):
        out.append(("If-None-Match", entry["etag"]))
    if entry.get("last_modified"):
        out.append(("If-Modified-Since", entry["last_modified"]))
    return out


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.strip()
    return None


def _connect(service: dict[str, Any], timeout: float) -> http.client.HTTPConnection:
    import http.client

    from vpnoffload.lean.marked import connect

    sock = connect(service["address"], service["port"], timeout)  # marked: passes the fail-fast rules
    if service.get("tls"):
        import ssl

        # Home's certificate is the public site's; the tunnel already authenticates home, and
        # this box may have no CA bundle: the name is sent (SNI) but not verified.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock, server_hostname=service["host"].rsplit(":", 1)[0])
    conn = http.client.HTTPConnection(service["address"], service["port"], timeout=timeout)
    conn.sock = sock
    return conn


def fetch_one(service: dict[str, Any], path: str, entry: dict[str, Any] | None, room: int, directory: str,
              timeout: float) -> tuple[str, str, dict[str, Any] | None]:
    """Fetch ``path`` for ``service``: (outcome, reason, new index entry or None). Writes the body
    to a new file in ``directory`` only for KEEP; never more than ``room`` bytes."""
    conn = _connect(service, timeout)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        for name, value in [("Host", service["host"]), ("User-Agent", USER_AGENT),
                            ("Accept-Encoding", "identity"), ("Connection", "close"),
                            *conditional_headers(entry)]:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        headers = resp.getheaders()
        outcome, reason = verdict(resp.status, headers)
        now = time.time()
        if outcome == RENEW:
            if not entry:
                return FAIL, "304 without a copy", None
            return RENEW, reason, dict(entry, fetched=now)
        if outcome != KEEP:
            return outcome, reason, None
        length = _header(headers, "content-length")
        if length is not None and length.isdigit() and int(length) > room:
            return FAIL, f"larger ({length} bytes) than the room left ({room})", None
        name = copies.body_name(path)
        target = os.path.join(directory, name)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        size, ok = 0, False
        try:
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > room:
                    return FAIL, f"larger than the room left ({room} bytes)", None
                os.write(fd, chunk)
            os.fsync(fd)
            ok = True
        finally:
            os.close(fd)
            if not ok:
                os.unlink(target)
        return KEEP, reason, {"file": name, "size": size, "fetched": now,
                              "type": _header(headers, "content-type") or "application/octet-stream",
                              "etag": _header(headers, "etag"), "last_modified": _header(headers, "last-modified")}
    finally:
        conn.close()


def copy_service(run: str, service: dict[str, Any], room: int, timeout: float) -> int:
    """Refresh every kept path of ``service``; returns the bytes it keeps afterwards."""
    directory = copies.service_dir(run, service["name"])
    os.makedirs(directory, mode=0o700, exist_ok=True)
    old = copies.read_index(run, service["name"])
    pages: dict[str, dict[str, Any]] = {}
    results: dict[str, str] = {}
    kept_before = {p: e for p, e in old["pages"].items() if p in service["paths"]}
    room -= sum(e.get("size", 0) for e in kept_before.values())
    for path in service["paths"]:
        entry = kept_before.get(path)
        own = entry.get("size", 0) if entry else 0
        try:
            outcome, reason, new = fetch_one(service, path, entry, room + own, directory, timeout)
        except (OSError, ValueError) as exc:  # http.client's errors are OSError or ValueError kinds
            outcome, reason, new = FAIL, str(exc) or type(exc).__name__, None
        except Exception as exc:  # http.client.HTTPException (a broken response): a failed fetch
            outcome, reason, new = FAIL, type(exc).__name__, None
        results[path] = f"{outcome}: {reason}"
        if new is not None:
            pages[path] = new
            room += own - new["size"]
        elif outcome == FAIL and entry is not None:
            pages[path] = entry  # a failed fetch keeps the old copy
        elif entry is not None:
            room += own  # refused now: the old copy goes
    kept = sum(1 for r in results.values() if r.startswith((KEEP, RENEW)))
    summary = f"{kept}/{len(results)} fetched"
    problems = [f"{p} {r}" for p, r in results.items() if not r.startswith((KEEP, RENEW))]
    copies.write_index(run, service["name"], {"format": copies.FORMAT, "pages": pages, "last_fetch": time.time(),
                                              "result": summary + ("; " + "; ".join(problems) if problems else ""),
                                              "paths": results})
    wanted = {e["file"] for e in pages.values()} | {copies.INDEX}
    for name in os.listdir(directory):
        if name not in wanted and not name.startswith(f".{copies.INDEX}."):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
    return sum(e["size"] for e in pages.values())


def run(job: dict[str, Any]) -> int:
    """Do one job (see :meth:`vpnoffload.fallback.copies.CopySchedule.job`)."""
    run_dir = job["run"]
    os.makedirs(copies.copies_dir(run_dir), mode=0o700, exist_ok=True)
    fetched = {s["name"] for s in job["services"]}
    # Room: the cap less what the services not fetched this time keep.
    used = sum(copies.summary(run_dir, name)["bytes"] for name in job.get("counted", []) if name not in fetched)
    room = int(job["max_bytes"]) - used
    for service in job["services"]:
        room -= copy_service(run_dir, service, room, float(job["timeout"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -I -S ... vpnoffload.fallback.copier`` with the job (marshal) on stdin."""
    from vpnoffload.errors import BackendError, ConfigError
    from vpnoffload.exits import run_main
    from vpnoffload.lean import say

    say.prefix = "vpnoffload-copier"

    def body() -> int:
        try:
            job = marshal.loads(sys.stdin.buffer.read(1 << 20))
        except (EOFError, ValueError, TypeError):
            raise ConfigError("no job on stdin") from None
        try:
            return run(job)
        except OSError as exc:
            raise BackendError(f"cannot keep the offline copies: {exc}") from None

    return run_main(body, prog=say.prefix)


if __name__ == "__main__":
    sys.exit(main())
