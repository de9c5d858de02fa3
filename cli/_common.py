"""What every ``metagen`` subcommand shares: the consoles and the user-error boundary."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from metagen.errors import MetaGenError

out = Console()
err = Console(stderr=True)
INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """A user's mistake ends in one plain line and exit code 1; a bug keeps its traceback."""
    try:
        yield
    except MetaGenError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)  # "metagen[plot]" is no markup
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(INTERRUPTED) from None
