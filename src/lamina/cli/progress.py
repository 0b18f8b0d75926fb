"""Progress bars for commands that move bytes: the library reports events, this draws.

On a terminal each blob gets a bar (``Copying 3f1e2a9c…  [=====     ] 1.2MB/4.0MB``);
off a terminal nothing is drawn, so pipes and logs see only the result lines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn

from lamina.cli.format import err
from lamina.transport.copy import CopyEvent


@contextlib.contextmanager
def blob_progress(verb: str) -> Iterator[Callable[[CopyEvent], None] | None]:
    if not err.is_terminal:
        yield None
        return
    tasks: dict[str, TaskID] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  console=err, transient=True) as bar:

        def on_event(event: CopyEvent) -> None:
            key = str(event.descriptor.digest)
            if event.kind == "exists":
                return
            if key not in tasks:
                tasks[key] = bar.add_task(f"{verb} {event.descriptor.digest.short}",
                                          total=event.total)
            bar.update(tasks[key], completed=event.done)

        yield on_event
