"""What every command prints through: status on stderr, errors in one line."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from exporter.core.settings import Settings

# Lines are never wrapped: a pipe or a log keeps each whole (rich would wrap at 80 columns).
console = Console(stderr=True, soft_wrap=True)
Command = Callable[[Settings, argparse.Namespace], int]


def error(message: str) -> None:
    """One line on stderr, however long: a log or a terminal keeps it whole."""
    console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
