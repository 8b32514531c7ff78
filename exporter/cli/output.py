"""What every command prints through: status on stderr, errors in one line."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from exporter.core.settings import Settings

console = Console(stderr=True)
Command = Callable[[Settings, argparse.Namespace], int]


def error(message: str) -> None:
    """One line on stderr, however long: a log or a terminal keeps it whole."""
    console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
