"""The progress bars' rate column (engine/cli/render.py imports it with rich, when
bars are shown)."""

from __future__ import annotations

from typing import Any

from rich.progress import ProgressColumn
from rich.text import Text


class RateColumn(ProgressColumn):
    """Chunks per second of a stage."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f}/s")
