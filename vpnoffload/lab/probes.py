"""Small programs :class:`~vpnoffload.lab.netns.Lab` runs inside a namespace (``python -c``):
a TCP probe and an HTTP GET that print one answer."""

PROBE = """
import errno, socket, sys, time
addr, port, timeout, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + wait
while True:
    try:
        socket.create_connection((addr, port), timeout=timeout).close()
        result = "open"
    except ConnectionRefusedError:
        result = "refused"
    except TimeoutError:
        result = "timeout"
    except OSError as exc:
        result = "unreachable" if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else f"error {exc.errno}"
    if result == "open" or time.monotonic() >= deadline:
        break
    time.sleep(0.05)
print(result)
"""

HTTP_GET = """
import sys, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=float(sys.argv[2])) as reply:
        status, body = reply.status, reply.read()
except urllib.error.HTTPError as exc:
    status, body = exc.code, exc.read()
except (urllib.error.URLError, OSError) as exc:
    status, body = 0, str(getattr(exc, "reason", exc)).encode()
sys.stdout.write(f"{status}\\n" + body.decode(errors="replace"))
"""
