"""Rich progress displays for the library's callback hooks (the CLI's side only)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from skinedge.pipelines.reporting import Reporter
from skinedge.train.callbacks import TrainCallbacks

console = Console(stderr=True)


def make_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
        console=console, transient=False,
    )


class CountProgress:
    """``progress(done, total)`` callback drawing one bar."""

    def __init__(self, progress: Progress, description: str):
        self.progress = progress
        self.task = progress.add_task(description, total=None, status="")

    def __call__(self, done: int, total: int | None) -> None:
        self.progress.update(self.task, completed=done, total=total)


class StageProgress:
    """``progress(description, done, total)`` callback: one bar per description."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, object] = {}

    def __call__(self, description: str, done: int, total: int | None) -> None:
        if description not in self.tasks:
            self.tasks[description] = self.progress.add_task(description, total=total, status="")
        self.progress.update(self.tasks[description], completed=done, total=total)
        if done == total and not self.progress.console.is_terminal:  # logs get one line each
            self.progress.console.print(f"{description}: {done}/{total}")


class RichTrainCallbacks(TrainCallbacks):
    """A bar per epoch with live loss, and a line of validation metrics after it."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None
        self.running = 0.0

    def on_start(self, info: dict[str, Any]) -> None:
        console.print(
            f"[bold]train[/] {info['train']} images, [bold]val[/] {info['val']}, "
            f"classes {info['class_counts']}, device {info['device']} x{info['world_size']}, "
            f"epochs {info['start_epoch']}..{info['epochs']}, weights {info['pretrained']}"
            + (f", synthetic {info['synthetic']}" if info.get("synthetic") else "")
        )

    def on_epoch_start(self, epoch: int, num_batches: int) -> None:
        self.running = 0.0
        self.task = self.progress.add_task(f"epoch {epoch}", total=num_batches, status="")

    def on_batch_end(self, epoch: int, batch: int, loss: float, lr: float) -> None:
        self.running = loss if batch == 1 else 0.9 * self.running + 0.1 * loss
        self.progress.update(self.task, completed=batch,
                             status=f"loss {self.running:.3f} lr {lr:.1e}")

    def on_validate(self, done: int, total: int) -> None:
        self.progress.update(self.task, status=f"validating {done}/{total}")

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        def fmt(key: str) -> str:
            value = record.get(key)
            return "n/a" if value is None else f"{value:.3f}"

        summary = (f"loss {record['train_loss']:.3f} | val bal.acc {fmt('balanced_accuracy')} "
                   f"mel AUC {fmt('melanoma_auc')}"
                   + (f" teacher agreement {fmt('teacher_agreement')}"
                      if "teacher_agreement" in record else "")
                   + f" | {record['seconds']:.0f}s"
                   + (" [best]" if record["best"] else ""))
        self.progress.update(self.task, status=summary)
        if not self.progress.console.is_terminal:  # logs and CI get one line per epoch
            self.progress.console.print(f"epoch {epoch}: {summary}")

    def on_calibrated(self, fit: dict[str, Any]) -> None:
        if "skipped" in fit:
            console.print(f"[yellow]calibration skipped: {fit['skipped']}[/]")
            return
        console.print(f"[bold]calibration[/] of best/ on {fit['images']} val images: temperature "
                      f"{fit['temperature']:.3f}, ECE {fit['ece_before']:.3f} -> "
                      f"{fit['ece_after']:.3f}, NLL {fit['nll_before']:.3f} -> "
                      f"{fit['nll_after']:.3f}")
        if fit.get("ood"):
            console.print(lesion_check_line(fit["ood"]))


def lesion_check_line(ood: dict[str, Any]) -> str:
    """One line on a fitted lesion check (``card.ood.fit``)."""
    return (f"[bold]lesion check[/]: {ood['method']} above {ood['threshold']:.4g} is not a "
            f"lesion; rejects {ood['false_rejection']:.1%} of {ood['lesion_images']} val "
            f"lesions, catches {ood['detection']:.0%} of {ood['non_lesion_images']} non-lesion "
            f"images ({ood['detection_held_out']:.0%} of {ood['non_lesion_held_out']} held out)")


class RichReporter(Reporter):
    """A pipeline's stages as rules, its counters and training runs as progress bars."""

    def stage(self, title: str) -> None:
        console.rule(title)

    def note(self, message: str) -> None:
        from skinedge.cli.common import print_log

        print_log(message)

    @contextlib.contextmanager
    def counter(self, description: str) -> Iterator[CountProgress]:
        with make_progress() as progress:
            yield CountProgress(progress, description)

    @contextlib.contextmanager
    def training(self) -> Iterator[RichTrainCallbacks]:
        with make_progress() as progress:
            yield RichTrainCallbacks(progress)
