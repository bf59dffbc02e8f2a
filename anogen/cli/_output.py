"""All terminal output goes through one object: results to stdout, everything else to stderr.

Library code never prints; it logs and reports progress through a callback (:data:`ProgressCallback`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table

from anogen.progress import ProgressEvent


class Output:
    """Owns the consoles and progress display of one command.

    Args:
        quiet: only results and errors.
        json_mode: ``--json``: stdout carries one JSON document and nothing else.
    """

    def __init__(self, *, quiet: bool = False, json_mode: bool = False) -> None:
        self.quiet = quiet
        self.json_mode = json_mode
        self.stdout = Console(soft_wrap=True, highlight=False)
        self.stderr = Console(stderr=True, soft_wrap=True, highlight=False)

    # -- results (stdout)
    def result(self, text: str) -> None:
        if not self.json_mode:
            self.stdout.print(text)

    def table(self, table: Table) -> None:
        if self.json_mode:
            return
        if self.stdout.is_terminal:
            self.stdout.print(table)
            return
        # Off a terminal (a CI log, a pipe) Rich assumes 80 columns and cuts cells to "category…"; nobody reads
        # such a log through a narrow window, so the table gets the width its whole cells need.
        from rich.measure import Measurement

        console = self.stdout
        needed = Measurement.get(console, console.options.update_width(1 << 16), table).maximum
        saved = console.width
        console.width = max(saved, needed)
        try:
            console.print(table)
        finally:
            console.width = saved

    def emit_json(self, payload: Any) -> None:
        if self.json_mode:
            sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
            sys.stdout.flush()

    # -- messages (stderr)
    def info(self, text: str) -> None:
        if not self.quiet:
            self.stderr.print(text)

    def warn(self, text: str) -> None:
        self.stderr.print(f"[yellow]warning:[/yellow] {text}")

    def error(self, text: str, hint: str | None = None) -> None:
        self.stderr.print(f"[red]error:[/red] {text}", markup=True)
        if hint:
            self.stderr.print(f"[dim]hint:[/dim] {hint}")

    @contextmanager
    def progress(self) -> Iterator[ProgressDisplay]:
        display = ProgressDisplay(self)
        try:
            yield display
        finally:
            display.close()


class ProgressDisplay:
    """Turns library progress events into a Rich bar on a terminal, or plain lines elsewhere (CI logs)."""

    PLAIN_INTERVAL_S = 5.0

    def __init__(self, output: Output) -> None:
        self.output = output
        self.enabled = not output.quiet
        self.rich = self.enabled and output.stderr.is_terminal
        self._progress = None
        self._tasks: dict[str, Any] = {}
        self._last_plain: dict[str, float] = {}
        if self.rich:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=output.stderr,
                transient=False,
            )
            self._progress.start()

    def __call__(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        info = "  ".join(f"{k} {v}" for k, v in event.info.items())
        if self._progress is not None:
            task = self._tasks.get(event.task)
            if task is None:
                task = self._progress.add_task(event.task, total=event.total, info=info)
                self._tasks[event.task] = task
            self._progress.update(task, completed=event.completed, total=event.total, info=info)
            return
        now = time.monotonic()
        done = event.total is not None and event.completed >= event.total
        if done or now - self._last_plain.get(event.task, 0.0) >= self.PLAIN_INTERVAL_S:
            self._last_plain[event.task] = now
            total = f"/{event.total}" if event.total is not None else ""
            self.output.stderr.print(f"{event.task}: {event.completed}{total} {info}".rstrip())

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
