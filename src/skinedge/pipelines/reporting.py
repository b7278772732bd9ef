"""How a pipeline tells its caller what it is doing, without printing.

A pipeline calls :class:`Reporter` hooks; the CLI passes one that draws rich progress bars,
a service or a test passes none (the default does nothing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from skinedge.train.callbacks import TrainCallbacks

#: ``progress(done, total)``: one counter's state (``total`` None while unknown).
CountCallback = Callable[[int, int | None], None]


class Reporter:
    """Hooks of a multi-stage pipeline; the default does nothing."""

    def stage(self, title: str) -> None:
        """A new stage starts (``"2/4 train"``)."""

    def note(self, message: str) -> None:
        """A line worth showing (a reused file, a skipped-rows report)."""

    @contextlib.contextmanager
    def counter(self, description: str) -> Iterator[CountCallback | None]:
        """A ``progress(done, total)`` callback for one counted step, or None."""
        yield None

    @contextlib.contextmanager
    def training(self) -> Iterator[TrainCallbacks | None]:
        """Callbacks for one training run, or None."""
        yield None


class GANProgress:
    """GAN training hooks -> one ``progress(done, total)`` counter in images shown."""

    def __init__(self, count, kimg: float):
        self.count, self.total = count, int(kimg * 1000)

    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_loading(self, done: int, total: int) -> None: ...
    def on_snapshot(self, kimg: float, grid: Path) -> None: ...

    def on_tick(self, kimg: float, total_kimg: float, record: dict[str, float]) -> None:
        if self.count:
            self.count(int(kimg * 1000), self.total)
