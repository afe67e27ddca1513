"""Child processes of the lean VPS processes, without ``subprocess`` (~1 MB resident).

The watchdog and the page server start three kinds of children: the swap
child (a decision on stdin), the config snapshot (its answer on stdout) and
the page server (detached, into a log file). ``os.posix_spawn`` and pipes do
all three; every wait is bounded. Our own fds are non-inheritable (PEP 446),
so a child gets exactly the three standard streams set up here.

:func:`lean_argv` starts a vpnoffload module as ``python -I -S``: isolated
like :func:`vpnoffload.proc.python_argv` (nothing from the current directory
or ``PYTHON*`` variables), and without ``site``, which costs ~2.4 MB resident
in this venv (the editable-install finder pulls in pathlib, ipaddress, re).
The package is found through the one directory that holds it.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~1 MB in a lean process)
if TYPE_CHECKING:
    from collections.abc import Callable

#: The directory holding the ``vpnoffload`` package (site-packages, or the checkout of an editable install).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_BOOT = "import sys;sys.path.insert(0,sys.argv.pop(1));import {module} as m;sys.exit(m.main(sys.argv[1:]))"


def lean_argv(module: str, *args: str, python: str = sys.executable) -> list[str]:
    """``python -I -S -c BOOT ROOT ARGS``: runs ``module.main(ARGS)``; only stdlib and vpnoffload importable."""
    return [python, "-I", "-S", "-c", _BOOT.format(module=module), ROOT, *args]


def full_argv(module: str, *args: str) -> list[str]:
    """``python -I -m module ARGS`` (what :func:`vpnoffload.proc.python_argv` gives, without importing it)."""
    return [sys.executable, "-I", "-m", module, *args]


class Child:
    """A started child: its pid and the parent's ends of the pipes asked for."""

    def __init__(self, pid: int, stdin: int | None, stdout: int | None, stderr: int | None) -> None:
        self.pid, self.stdin, self.stdout, self.stderr = pid, stdin, stdout, stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code once it has exited (reaping it), else None."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for it to exit; raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"pid {self.pid} still running after {timeout:g} s")
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL it and reap it."""
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait(5.0)
        self.close()

    def close(self) -> None:
        for name in ("stdin", "stdout", "stderr"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    def communicate(self, data: bytes, timeout: float) -> tuple[bytes, bytes]:
        """Write ``data`` to its stdin and close it, read stdout and stderr to EOF, reap it.

        Raises TimeoutError (the child is left running: call :meth:`kill`).
        """
        deadline = time.monotonic() + timeout
        if self.stdin is not None:
            try:
                if data:
                    os.write(self.stdin, data)  # decisions are far below the pipe's 64 KiB
            except BrokenPipeError:
                pass  # it exited already; its exit code says why
            os.close(self.stdin)
            self.stdin = None
        chunks: dict[int, list[bytes]] = {fd: [] for fd in (self.stdout, self.stderr) if fd is not None}
        open_fds = list(chunks)
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"pid {self.pid} did not finish within {timeout:g} s")
            ready, _, _ = select.select(open_fds, [], [], left)
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    chunks[fd].append(chunk)
                else:
                    open_fds.remove(fd)
        self.wait(max(0.0, deadline - time.monotonic()))
        out = b"".join(chunks.get(self.stdout, [])) if self.stdout is not None else b""
        err = b"".join(chunks.get(self.stderr, [])) if self.stderr is not None else b""
        self.close()
        return out, err


def finish(child: Child, data: bytes, timeout: float, what: str, *, ok: tuple[int, ...] = (0,),
           timeout_kind: Callable[[str], BaseException] | None = None) -> bytes:
    """Give a started child ``data`` on stdin, wait for it, return its stdout.

    The one way a parent reads a child's failure: a timeout kills it and raises
    ``timeout_kind(message)`` (BackendError by default); an exit status outside ``ok``
    raises the error the child reported (:func:`vpnoffload.exits.child_error`).
    The exit status stays in ``child.returncode``.
    """
    from vpnoffload import errors, exits

    try:
        out, err = child.communicate(data, timeout)
    except TimeoutError:
        child.kill()
        raise (timeout_kind or errors.BackendError)(f"{what} did not finish within {timeout:g} s") from None
    if child.returncode not in ok:
        raise exits.child_error(child.returncode or 0, err, what)
    return out


def run(argv: list[str], what: str, timeout: float, *, ok: tuple[int, ...] = (0,),
        timeout_kind: Callable[[str], BaseException] | None = None) -> bytes:
    """Run ``argv`` (stdin empty) to its end and return its stdout; failures as :func:`finish` raises them."""
    child = spawn(argv, stdout=True, stderr=True)
    return finish(child, b"", timeout, what, ok=ok, timeout_kind=timeout_kind)


def spawn(argv: list[str], *, stdin: bool = False, stdout: bool = False, stderr: bool = False,
          log: str | None = None, detach: bool = False, fds: "list[int] | tuple[int, ...]" = (),
          env: "dict[str, str] | None" = None) -> Child:
    """Start ``argv``. ``stdin``/``stdout``/``stderr``: give the parent a pipe to that stream;
    otherwise stdin is /dev/null and output goes to ``log`` (appended) or /dev/null.
    ``detach``: a new session, so the child outlives us and a terminal's signals miss it.
    ``fds`` (ascending): given to the child as its fds 3, 4, ... (the page server's listeners).
    ``env``: the child's environment (default: ours)."""
    actions: list[tuple[int, int, int]] = []
    ours: dict[str, int] = {}
    theirs: list[int] = []

    def pipe(target: int, parent_reads: bool) -> int:
        r, w = os.pipe()
        child_end, parent_end = (w, r) if parent_reads else (r, w)
        actions.append((os.POSIX_SPAWN_DUP2, child_end, target))
        theirs.append(child_end)
        return parent_end

    try:
        sink = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if log else os.open(os.devnull, os.O_RDWR)
        theirs.append(sink)
        if stdin:
            ours["stdin"] = pipe(0, parent_reads=False)
        else:
            null = os.open(os.devnull, os.O_RDONLY)
            theirs.append(null)
            actions.append((os.POSIX_SPAWN_DUP2, null, 0))
        for target, wanted, name in ((1, stdout, "stdout"), (2, stderr, "stderr")):
            if wanted:
                ours[name] = pipe(target, parent_reads=True)
            else:
                actions.append((os.POSIX_SPAWN_DUP2, sink, target))
        # Last, after the standard streams took their sources: in ascending order each source
        # is >= its target and every later source is above it, so no dup2 overwrites a source
        # still to come (and posix_spawn's dup2(n, n) clears close-on-exec).
        actions.extend((os.POSIX_SPAWN_DUP2, fd, 3 + i) for i, fd in enumerate(sorted(fds)))
        pid = os.posix_spawn(argv[0], argv, os.environ if env is None else env, file_actions=actions, setsid=detach)
    except BaseException:
        for fd in ours.values():
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    return Child(pid, ours.get("stdin"), ours.get("stdout"), ours.get("stderr"))
