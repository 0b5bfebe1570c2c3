"""MedRAT under `medsynth train`: one two-worker Ray Train + DeepSpeed (ZeRO-2) run on phantom chest
X-rays split into unpaired images and reports. A worker is killed once the first checkpoint is
registered; Ray Train restarts the worker group inside the same run, which resumes from the newest
checkpoint, finishes and exports a bundle whose data fingerprint carries the split's proof."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time

import numpy as np
import psutil
import torch
import yaml
from test_train import tiny_config, train_in_session

from factory.data.cache import CachedDataset
from factory.data.labels import CXR_LABELS
from factory.data.unpaired import patient_hash
from factory.models.bundle import load_bundle
from factory.models.registry import spec
from factory.models.spec import Captioning
from factory.train.recipes import get_recipe

TINY = {"cnn_width": 4, "d_model": 16, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "ff_dim": 16,
        "memory_size": 8, "memory_top_k": 2, "class_hidden": 8, "max_words": 48}
STEPS = 30  # enough that the kill, right after the first checkpoint, lands mid-run on an idle machine too


def _train_workers() -> list[psutil.Process]:
    """This test session's Ray Train workers (other sessions' Ray instances share the host)."""
    found = []
    for process in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def _kill_a_worker_after_the_first_checkpoint(run_dir, killed: list[int], deadline_s: float = 240) -> None:
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and not snapshot.exists():
        time.sleep(0.05)
    workers = _train_workers()
    if workers:
        os.kill(workers[-1].pid, signal.SIGKILL)
        killed.append(workers[-1].pid)


def test_two_workers_train_checkpoint_resume_and_export(ray_local, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")  # reports wait on it (tests/test_train.py)
    settings = tiny_config(tmp_path, name="medrat", recipe="medrat", model=TINY, batch_size=4, steps=STEPS,
                           checkpoint_every=2, max_failures=1,
                           data={"count": 40, "size": 32, "min_word_count": 2, "seed": 3})
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(settings))
    run_dir = tmp_path / "runs" / "medrat"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_after_the_first_checkpoint, args=(run_dir, killed))
    killer.start()
    printed = train_in_session(config_path)
    killer.join()
    assert killed, "no Ray Train worker to kill"

    # The restarted workers resumed from a checkpoint of this run, not from step 0.
    head = next(line for line in printed.splitlines() if line.startswith(f"run medrat: step {STEPS} of {STEPS}"))
    resumed = int(head.split("resumed from step ")[1].rstrip(")"))
    assert 2 <= resumed < STEPS and resumed % 2 == 0, head
    lines = printed.splitlines()
    losses = {k: float(v) for k, v in (pair.split("=") for pair in lines[lines.index(head) + 1].split())}
    assert losses.keys() >= {"lang", "contrast", "class_image", "class_report"}
    assert all(math.isfinite(v) for v in losses.values())
    checkpoints = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert json.loads((checkpoints[-1] / "runner_state.json").read_text())["step"] == STEPS
    assert "medrat" in {p.name for p in checkpoints[-1].iterdir()}

    bundle = load_bundle(str(tmp_path / "bundle"))
    assert bundle.recipe == "medrat" and bundle.metadata["metrics"]["steps"] == STEPS
    assert bundle.label_names == list(CXR_LABELS) and bundle.vocabulary is not None
    initial = get_recipe("medrat").build(bundle.model_config, seed=0)
    moved = [not torch.equal(a, b) for a, b in zip(bundle.nets["medrat"].state_dict().values(),
                                                   initial["medrat"].state_dict().values())]
    assert any(moved)

    # The fingerprint proves the sides unpaired: each side's patients are those of its cache, and no
    # patient is on both.
    record = bundle.metadata["training_data"]["unpaired"]
    images, reports = (CachedDataset(str(run_dir / "data" / f"{part}.zarr")) for part in ("images", "reports"))
    assert not images.has_report.any() and reports.has_report.all() and images.images.shape[0] + len(reports) == 40
    for side, cache in (("images", images), ("reports", reports)):
        assert record[side]["patient_hashes"] == sorted({patient_hash(str(p)) for p in cache.patient_ids})
        assert record[side]["studies"] == len(cache)
    assert not set(record["images"]["patient_hashes"]) & set(record["reports"]["patient_hashes"])

    # The bundle captions through the seam: the same words for an image alone or in a batch.
    product = spec("medrat").product(Captioning)
    films = (np.random.default_rng(0).random((3, 48, 48)) * 255).astype(np.uint8)
    ids = product.caption(bundle.nets, films)
    assert np.array_equal(ids[1:2], product.caption(bundle.nets, films[1:2]))
    assert len(product.decode_reports(ids, bundle.vocabulary)) == 3
