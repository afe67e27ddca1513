"""The watchdog's probe namespace: a network namespace that lives exactly as long as the watchdog.

The second health check (``health.forward_probe``) must enter the VPS as a
visitor's packet does (PREROUTING, FORWARD, the tunnel), so it starts in a small
namespace linked to the VPS by a veth pair (names and addresses:
:mod:`vpnoffload.probens`)::

    VPS netns                                   probe netns (a thread of the watchdog)
      vpnoffload-pb 198.18.255.253/30  <-veth->   probe0 198.18.255.254/30, lo up
                                                  default via 198.18.255.253

Nothing is named or mounted: one thread of the watchdog (:class:`_Worker`)
calls ``unshare(CLONE_NEWNET)``, which moves only that thread, and stays there
serving jobs (the ``ip`` commands for its side of the link, the check's
sockets: a child process or a socket starts in the namespace of the thread that
makes it). The watchdog also keeps an fd to it. When the process ends, however
it ends (SIGKILL included), the kernel frees the namespace, and with it
``probe0`` and so ``vpnoffload-pb``: nothing is left behind and ``up``/``down``
have no part in it. A clean stop deletes the link itself, so it is gone at once
rather than when the kernel's namespace cleanup runs.

A ``vpnoffload-pb`` that exists already belongs to another watchdog: this one
says so and runs without the forward check, trying again every :data:`RETRY` s
(as after any failure, or when its link disappears).

Lean like the rest of the watchdog: os, socket, threading, ``watch.spawn`` for
``ip``; ``_ctypes`` (~0.2 MB) only on Python < 3.12, which has no ``os.unshare``.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time

from vpnoffload import probens
from vpnoffload.errors import VpnOffloadError
from vpnoffload.lean import spawn
from vpnoffload.lean.say import Log

TYPE_CHECKING = False  # typing costs ~1 MB resident: annotations stay strings here
if TYPE_CHECKING:
    from collections.abc import Callable

    IpRunner = Callable[[list[str]], None]

log = Log("vpnoffload.watch")
#: Seconds between tries while there is no probe namespace (failed, taken by another watchdog, or gone).
RETRY = 30.0
#: Every job in the probe thread and every ``ip`` command is bounded by this.
CALL_TIMEOUT = 5.0
_CLONE_NEWNET = 0x40000000


def unshare_net() -> None:
    """Move the calling thread (only it) into a new network namespace; raises OSError."""
    if hasattr(os, "unshare"):  # Python >= 3.12
        os.unshare(_CLONE_NEWNET)
        return
    import _ctypes  # lazy: paid only by a watchdog that makes a probe namespace

    if _libc_call("unshare")(_CLONE_NEWNET) != 0:
        err = _ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")


def _libc_call(name: str) -> "Callable[[int], int]":
    """libc's ``int name(int)``, called through ``_ctypes`` alone: the ``ctypes`` package on top of
    it costs the watchdog another ~0.2 MB resident for the whole of its life, for one call."""
    import _ctypes

    class CInt(_ctypes._SimpleCData):  # type: ignore[type-arg]  # ctypes.c_int: calls return a Python int
        _type_ = "i"

    class Call(_ctypes.CFuncPtr):  # ctypes.CDLL(None, use_errno=True)'s function type
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = CInt

    return Call(_ctypes.dlsym(_ctypes.dlopen(None, os.RTLD_NOW), name))  # type: ignore[no-any-return]


def ip_binary() -> str:
    """The ``ip`` command's path (``os.posix_spawn`` does not search PATH)."""
    for where in (os.environ.get("PATH") or "").split(os.pathsep) + ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]:
        candidate = os.path.join(where or ".", "ip")
        if os.path.isabs(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise OSError(errno.ENOENT, "no 'ip' command (install iproute2)")


def run_ip(args: list[str]) -> None:
    """``ip ARGS`` in the calling thread's network namespace, bounded; raises OSError with ip's words."""
    what = f"ip {' '.join(args)}"
    child = spawn.spawn([ip_binary(), *args], stderr=True)
    try:
        spawn.finish(child, b"", CALL_TIMEOUT, what, timeout_kind=lambda m: OSError(errno.ETIMEDOUT, m))
    except VpnOffloadError as exc:
        raise OSError(errno.EIO, f"{what}: {exc}") from None


def link_index(name: str) -> int | None:
    """The interface's index in the calling thread's namespace (None: no such link). Asked of the
    kernel, not /sys/class/net, which shows the namespace sysfs was mounted in."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


class _Job:
    __slots__ = ("fn", "done", "value", "error")

    def __init__(self, fn: "Callable[[], object]") -> None:
        self.fn, self.done, self.value, self.error = fn, threading.Event(), None, None


class _Worker(threading.Thread):
    """A daemon thread that enters a new network namespace and then runs jobs there, one at a time."""

    def __init__(self, unshare: "Callable[[], None]") -> None:
        super().__init__(name="probe-ns", daemon=True)
        self._unshare = unshare
        self._cond = threading.Condition()
        self._jobs: list[_Job] = []
        self._stopping = False
        self.entered = threading.Event()
        self.error: OSError | None = None
        self.tid = 0
        self.fd: int | None = None

    @property
    def netns_path(self) -> str:
        """The namespace as a path other processes can open (iproute2's ``netns PATH``)."""
        return f"/proc/{os.getpid()}/task/{self.tid}/ns/net"

    def run(self) -> None:
        try:
            self._unshare()
            self.tid = threading.get_native_id()
            # Kept open for the process's lifetime: the namespace outlives this thread only through it.
            self.fd = os.open(self.netns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.error = exc
            self.entered.set()
            return
        self.entered.set()
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    left, self._jobs = self._jobs, []
                    break
                job = self._jobs.pop(0)
            try:
                job.value = job.fn()
            except BaseException as exc:  # handed to the caller, who decides
                job.error = exc
            job.done.set()
        for job in left:
            job.error = OSError(errno.ESHUTDOWN, "the probe namespace was closed")
            job.done.set()

    def call(self, fn: "Callable[[], object]", timeout: float = CALL_TIMEOUT) -> object:
        """Run ``fn`` in this thread (so inside the namespace) and return what it returns."""
        job = _Job(fn)
        with self._cond:
            if self._stopping or not self.is_alive():
                raise OSError(errno.ESHUTDOWN, "the probe namespace is closed")
            self._jobs.append(job)
            self._cond.notify()
        if not job.done.wait(timeout):
            raise OSError(errno.ETIMEDOUT, f"the probe namespace did not answer within {timeout:g} s")
        if job.error is not None:
            raise job.error
        return job.value

    def stop(self) -> None:
        """End the thread and drop the fd: the kernel frees the namespace (and the veth pair in it)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(CALL_TIMEOUT)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _make_sockets(specs: "list[tuple[int, int, int]]") -> "list[socket.socket | None]":
    out: "list[socket.socket | None]" = []
    for family, kind, proto in specs:
        try:
            out.append(socket.socket(family, kind, proto))
        except OSError:  # a raw socket without CAP_NET_RAW: no ping, the connect still counts
            out.append(None)
    return out


class ProbeNamespace:
    """The watchdog's probe namespace and its veth pair; the loop calls :meth:`ensure` every tick.

    ``ip`` (argv without "ip" -> None, raises OSError), ``unshare`` and
    ``index_of`` (a link's index in the VPS's namespace, None if missing) are
    injectable so unit tests record which commands run in which namespace.
    """

    def __init__(self, net: str | None = None, *, ip: "IpRunner" = run_ip,
                 unshare: "Callable[[], None]" = unshare_net, index_of: "Callable[[str], int | None] | None" = None,
                 clock: "Callable[[], float]" = time.monotonic, retry: float = RETRY) -> None:
        self.vps_side, self.probe_side = probens.addresses(net)
        self.ip, self.unshare, self.clock, self.retry = ip, unshare, clock, retry
        self.index_of = index_of or link_index
        self._worker: _Worker | None = None
        self._ifindex: int | None = None  # of our vpnoffload-pb: a link of that name with another index is not ours
        self._next_try = float("-inf")
        self._said = ""

    # ---------------------------------------------------------------- state

    def available(self) -> bool:
        """Is the forward check possible now (namespace made, link up and ours)?"""
        return self._worker is not None and self._ifindex is not None

    @property
    def netns_path(self) -> str | None:
        return self._worker.netns_path if self._worker is not None else None

    def _link_index(self) -> int | None:
        return self.index_of(probens.VPS_DEVICE)

    def _say(self, message: str, *args: object) -> None:
        """Log each distinct condition once, not every RETRY seconds."""
        text = message % args if args else message
        if text != self._said:
            self._said = text
            log.warning("%s", text)

    # ---------------------------------------------------------------- life cycle

    def ensure(self) -> bool:
        """Keep the namespace there: make it when due, notice when its link has gone. True: available."""
        if self._worker is not None:
            if self._worker.is_alive() and self._link_index() == self._ifindex:
                return True
            self._say("probe link %s is gone: visitor-path check off until it is made again", probens.VPS_DEVICE)
            self._teardown(delete_link=False)
        now = self.clock()
        if now < self._next_try:
            return False
        self._next_try = now + self.retry
        if self._link_index() is not None:
            self._say("%s exists already (another watchdog running?): running without the visitor-path check, "
                      "trying again every %g s", probens.VPS_DEVICE, self.retry)
            return False
        try:
            self._setup()
        except OSError as exc:
            self._say("no probe namespace (%s): only the direct check counts, trying again every %g s",
                      exc.strerror or exc, self.retry)
            return False
        self._said = ""
        log.info("probe namespace ready: %s %s/30 here, %s %s/30 in %s", probens.VPS_DEVICE, self.vps_side,
                 probens.PROBE_DEVICE, self.probe_side, self.netns_path)
        return True

    def _setup(self) -> None:
        worker = _Worker(self.unshare)
        worker.start()
        if not worker.entered.wait(CALL_TIMEOUT) or worker.error is not None:
            worker.stop()
            raise worker.error or OSError(errno.ETIMEDOUT, "the probe thread did not start")
        self._worker = worker
        made = False
        try:
            # From the VPS's namespace (this thread): our end here, the peer straight into the probe thread's.
            self.ip(["link", "add", probens.VPS_DEVICE, "type", "veth", "peer", "name", probens.PROBE_DEVICE,
                     "netns", worker.netns_path])
            made = True
            self.ip(["addr", "add", f"{self.vps_side}/30", "dev", probens.VPS_DEVICE])
            self.ip(["link", "set", probens.VPS_DEVICE, "up"])
            # From inside: `ip -n` takes only names in /run/netns, so these run from the probe thread.
            for args in (["link", "set", "lo", "up"],
                         ["addr", "add", f"{self.probe_side}/30", "dev", probens.PROBE_DEVICE],
                         ["link", "set", probens.PROBE_DEVICE, "up"],
                         ["route", "add", "default", "via", self.vps_side]):
                worker.call(lambda args=args: self.ip(args))
            self._ifindex = self._link_index()
            if self._ifindex is None:
                raise OSError(errno.ENODEV, f"{probens.VPS_DEVICE} vanished while it was being set up")
        except OSError:
            self._teardown(delete_link=made)
            raise

    def _teardown(self, *, delete_link: bool) -> None:
        worker, self._worker, self._ifindex = self._worker, None, None
        if delete_link:
            try:
                self.ip(["link", "del", probens.VPS_DEVICE])
            except OSError:
                pass  # the namespace's end goes with it below, a moment later
        if worker is not None:
            worker.stop()

    def close(self) -> None:
        """At the watchdog's stop: delete our link now (if still ours) and end the namespace."""
        ours = self._worker is not None and self._ifindex is not None and self._link_index() == self._ifindex
        self._teardown(delete_link=ours)

    # ---------------------------------------------------------------- the check's sockets

    def sockets(self, specs: "list[tuple[int, int, int]]") -> "list[socket.socket | None]":
        """One socket per ``(family, type, proto)``, made inside the probe namespace (None for a
        spec the kernel refuses); OSError when there is no namespace to make them in."""
        worker = self._worker
        if worker is None:
            raise OSError(errno.ENOENT, "no probe namespace")
        return worker.call(lambda: _make_sockets(specs))  # type: ignore[return-value]
