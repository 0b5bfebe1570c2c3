"""The mailbox between Ray Train's controller and the driver's progress bar (factory.train.progress).

Its own module, importing nothing: Ray starts the actor in a fresh worker process that imports the
class's module, and factory.train.progress imports ray.train (pandas, pyarrow): about 1 CPU-s and
110 MB more for each training run's inbox."""

from __future__ import annotations

from typing import Any


class Inbox:
    """A Ray actor (num_cpus=0) the monitor posts reports to and the driver collects them from."""

    def __init__(self):
        self.items: list[dict[str, Any]] = []

    def post(self, item: dict[str, Any]) -> None:
        self.items.append(item)

    def take(self) -> list[dict[str, Any]]:
        items, self.items = self.items, []
        return items
