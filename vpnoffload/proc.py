"""The one way vpnoffload runs an external command.

Every call goes through :func:`run`: an argv list (never a shell string), a
bounded time, and the three ways a command can fail (missing, timed out,
non-zero exit) turned into :class:`~vpnoffload.errors.VpnOffloadError` kinds,
so no ``TimeoutExpired`` or ``FileNotFoundError`` ever reaches a user as a
traceback. Python children get :func:`python_argv`: isolated mode, so a root
process never imports from the directory it was started in. Long-running
children (the lab's daemons and web servers) are started with :func:`start`.

The lean VPS processes (watchdog, page server) cannot afford ``subprocess``
(~1 MB) and start theirs with :mod:`vpnoffload.lean.spawn` instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vpnoffload.errors import BackendError, PrerequisiteError

DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Result:
    """What a finished command printed, and its exit code."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def args(self) -> list[str]:
        """The argv, under ``subprocess.CompletedProcess``'s name."""
        return list(self.argv)


#: A child started with :func:`start`; stdin/stdout/stderr may be these.
Process = subprocess.Popen[bytes]
DEVNULL, STDOUT = subprocess.DEVNULL, subprocess.STDOUT


def run(argv: Sequence[str], *, input: str | None = None, timeout: float = DEFAULT_TIMEOUT,
        check: bool = True, hint: str | None = None, env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None, detached_output: bool = False,
        max_file_size: int | None = None) -> Result:
    """Run ``argv`` to completion and return its output.

    Raises PrerequisiteError when the program is missing (``hint`` says how to
    install it), BackendError when it runs past ``timeout`` seconds, and, with
    ``check``, BackendError naming the command and its last stderr line when it
    exits non-zero. ``detached_output``: collect the output through temp files,
    not pipes, so a daemon the command leaves behind (``ip netns exec NS openvpn
    --daemon``) cannot keep this call waiting for the pipe to close.
    ``max_file_size``: the command, and any daemon it leaves behind, can grow no file past
    that many bytes (``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored so a write past it fails
    with ``EFBIG`` instead of killing the writer).
    """
    argv = [str(a) for a in argv]
    preexec = None if max_file_size is None else _file_size_limit(max_file_size)
    program = shutil.which(argv[0], path=safe_path())
    if program is None:
        raise PrerequisiteError(f"{argv[0]} is missing" + (f": {hint}" if hint else ""))
    try:
        if detached_output:
            result = _run_into_files(argv, input, timeout, env, cwd, program, preexec)
        else:
            proc = subprocess.run(argv, executable=program, input=input, capture_output=True, text=True,
                                  timeout=timeout, check=False,
                                  stdin=None if input is not None else subprocess.DEVNULL,
                                  env=dict(env) if env is not None else None, cwd=cwd, preexec_fn=preexec)
            result = Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
    except subprocess.TimeoutExpired:
        raise BackendError(f"{_shown(argv)} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise BackendError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    if check and not result.ok:
        raise BackendError(f"{_shown(argv)} failed: {last_line(result)}")
    return result


def safe_path() -> str:
    """``PATH`` without its relative entries (``''``, ``.``, ``bin``): those name the directory
    a command happens to run from, and a program planted there must not run as root."""
    entries = os.environ.get("PATH", os.defpath).split(os.pathsep)
    return os.pathsep.join(e for e in entries if os.path.isabs(e)) or "/usr/sbin:/usr/bin:/sbin:/bin"


def _file_size_limit(limit: int) -> Callable[[], None]:
    """What the child runs before exec: the file size limit, and SIGXFSZ ignored (an
    ignored signal stays ignored across exec; subprocess resets it to the default first).
    Only async-signal-safe system calls, on modules imported here, before the fork."""
    import resource
    import signal

    def child() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return child


def _run_into_files(argv: list[str], input: str | None, timeout: float, env: Mapping[str, str] | None,
                    cwd: str | os.PathLike[str] | None, program: str,
                    preexec: Callable[[], None] | None = None) -> Result:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        if input is not None:
            returncode = subprocess.run(argv, executable=program, input=input.encode(), stdout=out, stderr=err,
                                        timeout=timeout, check=False, env=dict(env) if env is not None else None,
                                        cwd=cwd, preexec_fn=preexec).returncode
        else:
            with subprocess.Popen(argv, executable=program, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                  env=dict(env) if env is not None else None, cwd=cwd, preexec_fn=preexec) as child:
                try:
                    returncode = _wait(child, timeout)
                except BaseException:  # the timeout, Ctrl-C: as subprocess.run does
                    child.kill()
                    raise
        out.seek(0)
        err.seek(0)
        return Result(tuple(argv), returncode, out.read().decode(errors="replace"),
                      err.read().decode(errors="replace"))


def _wait(child: subprocess.Popen[bytes], timeout: float) -> int:
    """``child.wait(timeout)``, woken by the exit itself. CPython's wait with a timeout sleeps
    in steps of up to 50 ms, ~25 ms late on average: for each of the hundreds of lab commands
    a test module runs. A pidfd becomes readable when the child exits (Linux 5.3)."""
    import select

    try:
        pidfd = os.pidfd_open(child.pid)
    except (AttributeError, OSError):  # an older kernel or Python
        return child.wait(timeout)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        # poll() takes a C int of ms (~24.8 days at most); EINTR is retried with the time left (PEP 475).
        if not poller.poll(min(max(0.0, timeout) * 1000, 2**31 - 1)):
            raise subprocess.TimeoutExpired(child.args, timeout)
    finally:
        os.close(pidfd)
    return child.wait()


def start(argv: Sequence[str], **popen: Any) -> Process:
    """Start ``argv`` in the background (no shell); ``popen``: Popen's keywords (streams, env, session).

    The caller owns the child: it waits for it, or stops it with :func:`stop`.
    BackendError when it cannot be started.
    """
    try:
        child: Process = subprocess.Popen([str(a) for a in argv], **popen)
        return child
    except OSError as exc:
        raise BackendError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


def stop(child: Process, timeout: float = 2.0) -> None:
    """SIGKILL ``child`` and reap it (a killed child stays a zombie until waited for)."""
    child.kill()
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def last_line(result: Result) -> str:
    """The most telling line of a failed command's output."""
    lines = [ln.strip() for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
    return lines[-1][:300] if lines else f"exit status {result.returncode}"


def _shown(argv: Sequence[str]) -> str:
    text = " ".join(argv)
    return text if len(text) <= 120 else text[:117] + "..."


def python_argv(module: str, *args: str) -> list[str]:
    """``python -I -m module args``: a Python child that imports only from its installation.

    ``-I`` (isolated mode) leaves the current directory and the script's
    directory off ``sys.path`` and ignores ``PYTHON*`` variables, so a file
    planted where a root command is run cannot be imported as root.
    """
    return [sys.executable, "-I", "-m", module, *args]


def safe_cwd() -> str:
    """Where children run: a directory nobody but root can plant files in."""
    return "/" if os.path.isdir("/") else os.getcwd()
