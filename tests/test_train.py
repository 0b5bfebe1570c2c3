"""Ray Train + DeepSpeed: a two-worker EMIXER run of a few steps, checkpointed and exported as a bundle
whose weights moved away from their initial values, with its progress bar and TensorBoard events; a run
killed with its Ray and resumed; one run under plain DDP (engine: ddp), and DDP engines' forward rules
and checkpoints in one process."""

import contextlib
import io
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import psutil
import pytest
import torch
import yaml

from factory import storage
from factory.config import TrainConfig
from factory.models.bundle import load_bundle
from factory.train.engines import DDPEngine
from factory.train.runner import check_resumable
from factory.train.recipes import get_recipe

TINY_MODEL = {"g_width": 8, "d_width": 8, "f_width": 8, "hidden": 32, "word_embedding": 32,
              "image_feature": 32, "d_text_hidden": 32}


def tiny_config(tmp_path, **changes):
    settings = {"name": "tiny", "storage_path": str(tmp_path / "runs"), "steps": 4, "checkpoint_every": 2,
                "batch_size": 8, "workers": 2, "zero_stage": 2, "model": TINY_MODEL,
                "data": {"count": 48, "size": 32, "min_word_count": 2}, "bundle_out": str(tmp_path / "bundle")}
    settings.update(changes)
    return settings


def run_train(config_path, *overrides, timeout=300):
    """`medsynth train` in a process of its own, with a Ray of its own."""
    return subprocess.run([sys.executable, "-m", "factory", "train", str(config_path), *overrides],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "RAY_ADDRESS": ""})


# Ray Train's controller takes a report every health check (2 s by default), and a report waits for
# the one before it; it also notices the workers' start and end only at a check. With the tiny runs'
# sub-second steps, poll faster (the driver passes this on to the controller; docs/observability.md).
HEALTH_CHECK = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


def train_in_session(config_path, *overrides, stderr: io.StringIO | None = None) -> str:
    """`medsynth train` in this process, on the session's Ray instance (ray_local), its controller polling
    every HEALTH_CHECK; its stdout (and its stderr into `stderr`). A fresh Ray start is the killed-job
    test's subject; the others need only Ray Train's workers."""
    from factory.cli import main

    printed = io.StringIO()
    with mock.patch.dict(os.environ, {**HEALTH_CHECK, **os.environ}), contextlib.redirect_stdout(printed), \
            contextlib.redirect_stderr(stderr or io.StringIO()):
        assert main(["train", str(config_path), *overrides]) == 0
    return printed.getvalue()


def tensorboard_events(folder: Path) -> dict[str, dict[int, float | str]]:
    """Every value in a TensorBoard folder's event files, by tag and step, read as TensorBoard reads
    them: TFRecord frames (length, masked CRC-32C of it, data, masked CRC-32C of the data) of Event
    protos. Scalars as floats, text as strings; a resumed writer's purge marks under "purge"."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    from tensorboardX.record_writer import masked_crc32c

    values: dict[str, dict[int, float | str]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            header = data[at:at + 8]
            (length,), (header_crc,) = struct.unpack("<Q", header), struct.unpack("<I", data[at + 8:at + 12])
            body = data[at + 12:at + 12 + length]
            (body_crc,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
            assert header_crc == masked_crc32c(header) and body_crc == masked_crc32c(body), path
            at += 16 + length
            event = Event.FromString(body)
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                values.setdefault("purge", {})[event.step] = path.name
            for value in event.summary.value:
                text = value.tensor.string_val[0].decode() if value.tensor.string_val else None
                values.setdefault(value.tag, {})[event.step] = value.simple_value if text is None else text
    return values


def test_two_workers_train_checkpoint_snapshot_and_export(ray_local, tmp_path):
    """One run: checkpoints, a snapshot bundle, the exported bundle, the progress bar and the TensorBoard
    events. Resuming is the killed job's test."""
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    bar = io.StringIO()
    printed = train_in_session(config_path, "--set", "snapshot_every=3", "--set", "log_every=3", stderr=bar)
    head = "run tiny: step 4 of 4 (resumed from step 0)"
    assert head in printed
    # The driver's bar: steps, steps/s, the recipe's main losses (EmixerRecipe.progress_metrics).
    drawn = bar.getvalue().replace("\r", "\n").splitlines()
    last = [line for line in drawn if line.startswith("tiny: 100%")][-1]
    assert re.search(r"\| 4/4 \[[0-9:]+<00:00, +[0-9.]+s?(?:step/s|s/step), d_image=[-0-9.e]+, g_image=[-0-9.e]+, "
                     r"f_word_nll=[-0-9.e]+\]$", last), last
    assert "tiny: checkpoint at step 2: " in bar.getvalue()
    # TensorBoard events, from Ray Train's reports of rank 0: every 3 steps and at each checkpoint.
    events = tensorboard_events(tmp_path / "runs" / "tiny" / "tensorboard")
    assert sorted(events["train/g_image"]) == [2, 3, 4] and sorted(events["lr/G"]) == [2, 3, 4]
    assert all(math.isfinite(v) for v in events["train/d_image"].values())
    assert sorted(events["time/steps_per_second"]) == [2, 3, 4]
    assert events["checkpoint/saved"] == {2: 1.0, 4: 1.0}
    assert all("/tiny/checkpoint_" in path for path in events["checkpoint/text_summary"].values())
    snapshots = tmp_path / "runs" / "tiny" / "snapshots"
    assert sorted(p.name for p in snapshots.iterdir()) == ["step-000003"]
    assert load_bundle(str(snapshots / "step-000003")).metadata["metrics"]["steps"] == 3
    run_dir = tmp_path / "runs" / "tiny"
    assert len([p for p in run_dir.glob("checkpoint_*") if p.is_dir()]) == 2  # steps 2 and 4 (num_to_keep=2)
    lines = printed.splitlines()
    losses = dict(pair.split("=") for pair in lines[lines.index(head) + 1].split())
    assert losses.keys() >= {"d_image", "d_report", "d_joint", "g_image", "f_word_nll"}
    assert all(math.isfinite(float(v)) for v in losses.values())

    bundle = load_bundle(str(tmp_path / "bundle"))
    assert bundle.metadata["trained"] and bundle.metadata["metrics"]["steps"] == 4
    recipe = get_recipe("emixer")
    initial = recipe.build(bundle.model_config, seed=0)
    for name, net in bundle.nets.items():
        moved = [not torch.equal(a, b) for a, b in zip(net.state_dict().values(), initial[name].state_dict().values())
                 if a.dtype.is_floating_point]
        assert any(moved), f"{name} did not train"


def test_killed_job_resumes_from_newest_checkpoint(ray_local, tmp_path, monkeypatch):
    """The job runs with a Ray of its own and is killed with it; the same config run again (here on the
    session's Ray, as a restarted job meets a running cluster) resumes from the newest checkpoint."""
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tmp_path, steps=80, checkpoint_every=2)))
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")  # as in the test above
    job = subprocess.Popen([sys.executable, "-m", "factory", "train", str(config_path)], start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": ""})
    run_dir = tmp_path / "runs" / "tiny"
    snapshot_path = run_dir / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 240
    # Kill as soon as Ray Train has registered a checkpoint: the run is then mid-way, whatever the load.
    while not snapshot_path.exists() and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.1)
    assert job.poll() is None, "the job ended before it could be killed"
    # The driver and everything it started, without warning. Ray's workers run in sessions of their
    # own, out of reach of the process group: found through their parents before the kill, or a Ray
    # Train controller outlives the test.
    started = psutil.Process(job.pid).children(recursive=True)
    os.killpg(job.pid, signal.SIGKILL)
    for process in started:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    job.wait()
    _wait_until_unchanged(run_dir)
    assert json.loads(snapshot_path.read_text()), "no checkpoint was committed before the kill"
    # The newest step written (registered or not): the resumed run need only go two steps past it.
    newest = max(json.loads(state.read_text())["step"] for state in run_dir.glob("checkpoint_*/runner_state.json"))
    assert 2 <= newest < 80
    resumed = train_in_session(config_path, "--set", f"steps={newest + 2}")
    start = int(resumed.split("resumed from step ")[1].split(")")[0])
    assert 2 <= start <= newest and start % 2 == 0
    assert f"step {newest + 2} of {newest + 2}" in resumed
    bundle = load_bundle(str(tmp_path / "bundle"))  # exported once, at the resumed run's end
    assert bundle.metadata["metrics"]["steps"] == newest + 2


def _wait_until_unchanged(run_dir: Path, quiet_s: float = 3.0, limit_s: float = 60.0) -> None:
    """A process the job started after its tree was listed for the kill can still write a checkpoint:
    wait until the run folder stops changing before reading it."""
    def state():
        return sorted((str(p), p.stat().st_mtime_ns) for p in run_dir.glob("checkpoint*"))

    deadline, last, since = time.monotonic() + limit_s, state(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(0.5)
        if (now := state()) != last:
            last, since = now, time.monotonic()


def test_config_errors_name_the_file_and_field(tmp_path):
    config_path = tmp_path / "bad.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tmp_path, zero_stage=3)))
    result = run_train(config_path, timeout=60)
    assert result.returncode == 2
    assert f"{config_path}: zero_stage: Input should be 0, 1 or 2" in result.stderr
    with pytest.raises(Exception, match="precision bf16 needs use_gpu"):
        TrainConfig.model_validate(tiny_config(tmp_path, precision="bf16"))


def test_two_workers_under_ddp_train_checkpoint_and_export(ray_local, tmp_path):
    """One Ray run under plain DDP: the runner's resume is the DeepSpeed tests' subject, and DDP engines'
    checkpoints round-trip in the in-process test below; a second Ray run here took about 40 s more."""
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tmp_path, engine="ddp", zero_stage=0, steps=2)))
    first = train_in_session(config_path)
    head = "run tiny: step 2 of 2 (resumed from step 0)"
    assert head in first
    checkpoints = [p for p in (tmp_path / "runs" / "tiny").glob("checkpoint_*") if p.is_dir()]
    assert {p.name for p in checkpoints[0].glob("*.ddp.pt")} == {f"{n}.ddp.pt" for n in get_recipe("emixer").net_names}
    lines = first.splitlines()
    losses = dict(pair.split("=") for pair in lines[lines.index(head) + 1].split())
    assert all(math.isfinite(float(v)) for v in losses.values())
    bundle = load_bundle(str(tmp_path / "bundle"))
    initial = get_recipe("emixer").build(bundle.model_config, seed=0)
    for name, net in bundle.nets.items():
        assert any(not torch.equal(a, b) for a, b in zip(net.state_dict().values(), initial[name].state_dict().values())
                   if a.dtype.is_floating_point), f"{name} did not train"


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of world size 1: DDP's reducer runs (and refuses misuse) as on N ranks."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'process-group'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_engines_take_emixer_steps_and_round_trip_checkpoints(tmp_path, one_process_group):
    from tests.test_emixer_recipe import TINY, _batch

    torch.set_num_threads(1)
    recipe = get_recipe("emixer")

    def engines(seed):
        nets = recipe.build(TINY, seed=seed)
        return {name: DDPEngine(net, torch.optim.Adam(net.parameters(), **recipe.optimizer_config(name)), clip=1.0)
                for name, net in nets.items()}

    trained = engines(seed=0)
    generator = torch.Generator().manual_seed(0)
    # Two steps: G and F run under no_grad and frozen discriminators inside the others' steps; a
    # DDP forward of theirs would leave a reducer waiting for gradients at the next step.
    for step in range(2):
        metrics = recipe.train_step(trained, _batch([True, False, True, True], seed=step), step, generator)
        assert all(math.isfinite(v) for v in metrics.values())
    for name, engine in trained.items():
        engine.save(str(tmp_path), name)

    restored = engines(seed=1)
    for name, engine in restored.items():
        engine.load(str(tmp_path), name)
        for a, b in zip(engine.module.state_dict().values(), trained[name].module.state_dict().values()):
            assert torch.equal(a, b)
        steps = 2 * recipe.config["d_steps"] if name.startswith("D_") else 2
        assert engine.optimizer.state_dict()["state"][0]["step"] == steps
    metrics = recipe.train_step(restored, _batch([True, True, True, True], seed=2), 2, generator)
    assert all(math.isfinite(v) for v in metrics.values())
    with pytest.raises(FileNotFoundError, match="no DDP checkpoint"):
        restored["G"].load(str(tmp_path / "elsewhere"), "G")


def test_a_run_resumes_only_under_the_engine_that_checkpointed_it(tmp_path):
    ddp = TrainConfig.model_validate(tiny_config(tmp_path, engine="ddp", zero_stage=0))
    state = {"step": 2, "config": ddp.model_dump(mode="json")}
    check_resumable(state, ddp)
    with pytest.raises(ValueError, match="checkpointed with engine ddp; resume it with engine: ddp"):
        check_resumable(state, TrainConfig.model_validate(tiny_config(tmp_path, engine="deepspeed")))
    with pytest.raises(Exception, match="zero_stage 2 is DeepSpeed's"):
        TrainConfig.model_validate(tiny_config(tmp_path, engine="ddp", zero_stage=2))


def test_training_monitor_writes_events_where_the_run_is_stored(storage_root):
    """Ray Train's controller side, in process: reports become TensorBoard events in the run's folder
    (a local folder, or uploaded to S3), a restart from a checkpoint opens a new file that hides the
    redone steps, and evaluation points join the same folder."""
    from factory.train.progress import TrainingMonitor, events_url, record_evaluation

    class Checkpoint:
        path = "runs/tiny/checkpoint_x"

    url = events_url(storage_root, "tiny")
    monitor = TrainingMonitor(url, steps=6)
    monitor.after_report(None, [{"step": 0, "resumed_from": 0}, {"step": 0, "resumed_from": 0}], None)
    for step in (2, 3):
        monitor.after_report(None, [{"step": step, "resumed_from": 0, "g_image": step / 10, "lr_G": 1e-4},
                                    {"step": step, "g_image": 9.0}], Checkpoint() if step == 2 else None)
    # Workers restarted from the checkpoint at step 2 (FailureConfig) and go on to the end.
    for step in (2, 4, 6):
        monitor.after_report(None, [{"step": step, "resumed_from": 2, "g_image": 1 + step / 10}], None)
    record_evaluation(storage_root, "tiny", 6, {"fid": 12.5})

    local = Path(storage_root) if "://" not in storage_root else None
    if local is None:  # S3: read back what was uploaded
        local = Path(tempfile.mkdtemp())
        for name in storage.list_names(url):
            (local / name).write_bytes(storage.read_bytes(storage.join(url, name)))
    else:
        local = local / "tiny" / "tensorboard"
    events = tensorboard_events(local)
    # Rank 0's values only. Both files are kept; the second one's purge mark at step 3 tells TensorBoard
    # to hide the first one's step 3, redone after the restart. (This reader keeps the last file's
    # value of a step, here the second file's step 2.)
    assert events["train/g_image"] == {2: pytest.approx(1.2), 3: pytest.approx(0.3), 4: pytest.approx(1.4),
                                       6: pytest.approx(1.6)}
    assert events["lr/G"] == {2: pytest.approx(1e-4), 3: pytest.approx(1e-4)}
    assert events["checkpoint/saved"] == {2: 1.0} and events["checkpoint/text_summary"] == {2: "runs/tiny/checkpoint_x"}
    assert sorted(events["purge"]) == [1, 3]
    assert events["eval/fid"] == {6: 12.5}
