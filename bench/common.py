from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Result:
    name: str
    result: str
    baseline: str
    ratio: float
    target: str
    ok: bool | None  # None: a reference figure, with no target of its own
