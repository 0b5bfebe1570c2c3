"""Watching a training run: a progress bar on the driver, and TensorBoard event files in the run's folder.

Rank 0's metrics travel through Ray Train's own reporting. Every `log_every` steps, at every
checkpoint, and once before the first step, every worker calls `ray.train.report`. In Ray Train 2 that
call is a barrier, and only rank 0's metrics count. Ray Train's controller (one process, on the
driver's node) then calls `TrainingMonitor.after_report`. The monitor appends the scalars, and a mark
at each checkpoint, to one event file under STORAGE_PATH/NAME/tensorboard. It also hands the metrics to
the driver, which draws the bar (step, steps/s, ETA, the recipe's main losses). No worker writes
events.

Why TensorBoard event files rather than a local MLflow store: an event file is append-only, so one
writer can add to it while a viewer reads it. Writing needs no server and no database, only
tensorboardX, which Ray Train already brings. `tensorboard --logdir` reads it, on a laptop or next to
the cluster, and so do most experiment trackers. An MLflow store is a tree of small files per metric,
it needs mlflow installed (a large package with its own server for the UI), and it does not work on
an object store without a tracking server.

On an object store (s3://) the event file is written in a local folder of the controller's node. It is
uploaded whole, since an object cannot be appended to: at most every UPLOAD_EVERY_S seconds, at
every checkpoint and at the end. An ended run's events are complete there. A driver killed
mid-run loses at most the last UPLOAD_EVERY_S seconds of them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, Iterable, Mapping

import ray.train

from factory import storage
from factory.train.inbox import Inbox

EVENTS_FOLDER = "tensorboard"
UPLOAD_EVERY_S = 30.0
# What a report carries besides the recipe's metrics (factory.train.runner)
STEP, RESUMED_FROM, STEPS_PER_SECOND = "step", "resumed_from", "steps_per_second"


def events_url(storage_path: str, name: str) -> str:
    """The folder of a run's event files: a TensorBoard log directory."""
    return storage.join(storage_path, name, EVENTS_FOLDER)


def scalar_tags(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The TensorBoard tag of each reported metric: `lr_NET` -> lr/NET, the recipe's others -> train/NAME."""
    tags = {}
    for key, value in metrics.items():
        if key in (STEP, RESUMED_FROM) or not isinstance(value, (int, float)):
            continue
        if key == STEPS_PER_SECOND:
            tags["time/steps_per_second"] = float(value)
        elif key.startswith("lr_"):
            tags[f"lr/{key.removeprefix('lr_')}"] = float(value)
        else:
            tags[f"train/{key}"] = float(value)
    return tags


def main_metrics(metrics: Mapping[str, Any], wanted: Iterable[str] | None) -> dict[str, float]:
    """The metrics the bar shows: the recipe's `progress_metrics` (a name, or a name's suffix after an
    underscore, e.g. `cycle` for `mri_cycle`), else the first four it reports."""
    losses = {k: float(v) for k, v in metrics.items()
              if isinstance(v, (int, float)) and k not in (STEP, RESUMED_FROM, STEPS_PER_SECOND)
              and not k.startswith("lr_")}
    if wanted:
        wanted = tuple(wanted)
        return {k: v for k, v in losses.items() if any(k == w or k.endswith(f"_{w}") for w in wanted)}
    return dict(list(losses.items())[:4])


class EventLog:
    """One TensorBoard event file of a run, in its folder `url` (local or an object store).

    tensorboardX's synchronous writer, not its SummaryWriter: that one queues events for a thread, and
    its flush does not wait for the queue, so a file uploaded after a flush could miss the last events."""

    def __init__(self, url: str, purge_step: int | None = None, suffix: str = ""):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        self.url = url
        self.remote = storage.protocol_of(url) != "file"
        self.folder = tempfile.mkdtemp(prefix="medsynth-events-") if self.remote else url.removeprefix("file://")
        os.makedirs(self.folder, exist_ok=True)
        # Named by the second it was opened and the host. TensorBoard reads a folder's files in name
        # order: nanoseconds and the process id keep files opened in the same second (a restart,
        # evaluation points) apart and in order.
        self.writer = EventsWriter(os.path.join(self.folder, "events"), f".{time.time_ns()}.{os.getpid()}{suffix}")
        if purge_step is not None:
            # TensorBoard hides what earlier files of the folder hold from this step on.
            self.writer.write_event(Event(wall_time=time.time(), step=purge_step,
                                          session_log=SessionLog(status=SessionLog.START)))
        self.uploaded = time.monotonic()

    def _write(self, step: int, summary) -> None:
        from tensorboardX.proto.event_pb2 import Event

        self.writer.write_event(Event(wall_time=time.time(), step=step, summary=summary))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        from tensorboardX.summary import scalar

        for tag, value in values.items():
            self._write(step, scalar(tag, value))

    def text(self, step: int, tag: str, text: str) -> None:
        from tensorboardX.summary import text as text_summary

        self._write(step, text_summary(tag, text))

    def flush(self, upload: bool = False) -> None:
        """To the file now (a local viewer sees it at once); to the object store if `upload` or due."""
        self.writer.flush()
        if self.remote and (upload or time.monotonic() - self.uploaded >= UPLOAD_EVERY_S):
            for name in os.listdir(self.folder):
                with open(os.path.join(self.folder, name), "rb") as f:
                    storage.atomic_put(storage.join(self.url, name), f.read())
            self.uploaded = time.monotonic()

    def close(self) -> None:
        self.flush(upload=True)
        self.writer.close()
        if self.remote:
            shutil.rmtree(self.folder, ignore_errors=True)


def record_evaluation(storage_path: str, name: str, step: int, scores: Mapping[str, float]) -> None:
    """Evaluation scores of a run's bundle at `step` (a benchmark's evaluation point), as eval/NAME in
    the run's TensorBoard folder: on the same timeline as its training scalars."""
    log = EventLog(events_url(storage_path, name), suffix=".eval")
    try:
        log.scalars(step, {f"eval/{key}": float(value) for key, value in scores.items()})
    finally:
        log.close()


class TrainingMonitor(ray.train.UserCallback):
    """Runs in Ray Train's controller: rank 0's reported metrics into the event file and to the driver."""

    def __init__(self, url: str, steps: int, inbox=None):
        self.url, self.steps, self.inbox = url, steps, inbox
        self.log: EventLog | None = None
        self.last_step = -1

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        reported = metrics[0]  # rank 0's
        step = int(reported[STEP])
        if self.log is None or step <= self.last_step:
            # The first report, or workers restarted from a checkpoint (FailureConfig): a new file. The
            # steps after the checkpoint are done again, so TensorBoard hides what an earlier writer
            # (a killed run, the workers before the restart) logged for them.
            if self.log is not None:
                self.log.close()
            self.log = EventLog(self.url, purge_step=int(reported.get(RESUMED_FROM, 0)) + 1)
        self.last_step = step
        self.log.scalars(step, scalar_tags(reported))
        if checkpoint is not None:
            self.log.scalars(step, {"checkpoint/saved": 1.0})
            self.log.text(step, "checkpoint", checkpoint.path)
        self.log.flush(upload=checkpoint is not None or step >= self.steps)
        if self.inbox is not None:
            self.inbox.post.remote({**reported, "checkpoint": checkpoint.path if checkpoint else None})

    def after_exception(self, run_context, worker_exceptions) -> None:
        if self.log is not None:
            self.log.flush(upload=True)


class ProgressBar:
    """On the driver: collects the monitor's reports from the inbox and draws them as a tqdm bar."""

    POLL_S = 0.5

    def __init__(self, ray, name: str, steps: int, shown: Iterable[str] | None):
        self.ray, self.name, self.steps = ray, name, steps
        self.shown = tuple(shown) if shown else None
        self.inbox = ray.remote(num_cpus=0)(Inbox).remote()
        self.bar = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="training-progress", daemon=True)

    def __enter__(self) -> "ProgressBar":
        self.thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.stopped.set()
        self.thread.join()
        try:
            self._draw(self.ray.get(self.inbox.take.remote()))  # what arrived after the last poll
            self.ray.kill(self.inbox)
        except self.ray.exceptions.RayError:
            if exc_type is None:  # Ray going down with a failed run: that failure is the one to see
                raise
        finally:
            if self.bar is not None:
                self.bar.close()

    def _run(self) -> None:
        try:
            while not self.stopped.wait(self.POLL_S):
                self._draw(self.ray.get(self.inbox.take.remote()))
        except self.ray.exceptions.RayError:
            return  # the bar is a view of the run: if Ray cannot reach the inbox, fit() reports why

    def _draw(self, reports: list[dict[str, Any]]) -> None:
        from tqdm import tqdm

        for report in reports:
            step, start = int(report[STEP]), int(report.get(RESUMED_FROM, 0))
            if self.bar is None or step < self.bar.n:
                # The first report (before the first step) or a restart from a checkpoint: steps/s and
                # the ETA count from here.
                if self.bar is not None:
                    self.bar.close()
                self.bar = tqdm(total=self.steps, initial=start, desc=self.name, unit="step", dynamic_ncols=True)
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in main_metrics(report, self.shown).items()}, refresh=True)
            if report.get("checkpoint"):
                self.bar.write(f"{self.name}: checkpoint at step {step}: {report['checkpoint']}", file=sys.stderr)
