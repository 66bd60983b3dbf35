"""Terminal progress for training: a rich bar with ETA on a TTY, silence otherwise (logs, CI, sweeps)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextmanager
def epoch_progress(epochs: int, steps_per_epoch: int, *, enabled: bool = True) -> Iterator[Callable | None]:
    """Yield a callback `update(state)` that advances the bar, or None when there is no terminal."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    columns = (TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("train", total=epochs * steps_per_epoch, epoch=1, epochs=epochs)

        def update(state) -> None:
            bar.update(task, completed=state.epoch * steps_per_epoch + state.position, epoch=state.epoch + 1)

        yield update
