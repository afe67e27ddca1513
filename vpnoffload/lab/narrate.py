"""How the lab demo talks: a Narrator protocol, a quiet recording one for tests,
and a rich one for the terminal (``rich`` is imported by RichNarrator alone, so
``vpnoffload --help`` stays fast)."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Sequence
from typing import Protocol

class Narrator(Protocol):
    """Where the steps report to. Only narrators write to the terminal."""

    def section(self, title: str) -> None: ...
    def command(self, host: str, argv: Sequence[str]) -> None: ...
    def output(self, text: str) -> None: ...
    def note(self, text: str) -> None: ...
    def ok(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def waiting(self, text: str) -> contextlib.AbstractContextManager[None]: ...


class RecordingNarrator:
    """A quiet narrator that keeps ``(kind, text)`` events, for tests."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def section(self, title: str) -> None:
        self.events.append(("section", title))

    def command(self, host: str, argv: Sequence[str]) -> None:
        self.events.append(("command", f"{host}: {shlex.join(argv)}"))

    def output(self, text: str) -> None:
        self.events.append(("output", text))

    def note(self, text: str) -> None:
        self.events.append(("note", text))

    def ok(self, text: str) -> None:
        self.events.append(("ok", text))

    def warn(self, text: str) -> None:
        self.events.append(("warn", text))

    def waiting(self, text: str) -> contextlib.AbstractContextManager[None]:
        self.events.append(("waiting", text))
        return contextlib.nullcontext()

    def texts(self, kind: str) -> list[str]:
        return [text for k, text in self.events if k == kind]


class RichNarrator:
    """Narration on stdout with ``rich``: a rule per step, commands highlighted."""

    def __init__(self) -> None:
        from rich.console import Console

        # soft_wrap: long command lines stay one line, so they can be copied.
        self.console = Console(highlight=False, soft_wrap=True)
        utf = (self.console.encoding or "").lower().startswith("utf")
        self._tick, self._bang = ("✓", "!") if utf else ("ok", "!")

    def section(self, title: str) -> None:
        self.console.print()
        self.console.rule(f"[bold]{_escape(title)}", align="left")

    def command(self, host: str, argv: Sequence[str]) -> None:
        self.console.print(f"[dim]{_escape(host)}#[/dim] [bold cyan]{_escape(shlex.join(argv))}[/bold cyan]")

    def output(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            self.console.print(f"    {_escape(line)}", style="dim")

    def note(self, text: str) -> None:
        self.console.print(_escape(text))

    def ok(self, text: str) -> None:
        self.console.print(f"[bold green]{self._tick}[/bold green] {_escape(text)}")

    def warn(self, text: str) -> None:
        self.console.print(f"[bold yellow]{self._bang}[/bold yellow] {_escape(text)}")

    def waiting(self, text: str) -> contextlib.AbstractContextManager[None]:
        self.console.print(f"[dim]{_escape(text)}[/dim]")
        if self.console.is_terminal:
            return self.console.status("waiting...")  # type: ignore[return-value]  # rich's Status is a context manager
        return contextlib.nullcontext()


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


