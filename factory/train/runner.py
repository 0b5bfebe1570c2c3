"""Ray Train + DeepSpeed runner: any recipe, N workers, one DeepSpeed engine per network.

The driver decodes the training data once into a Zarr cache and builds the vocabulary, both under
the run's storage path; then a `TorchTrainer` starts N workers (gloo on CPU, nccl on GPU). Each
worker reads the cache, asks the recipe for its networks, wraps each one in its own DeepSpeed engine
(ZeRO stage, precision and clipping from the config), and runs the recipe's step on its share of
the data. Every `checkpoint_every` steps all engines save through `ray.train.Checkpoint` into the
run's storage; a run started again under the same name resumes from the newest checkpoint and
continues its step count, and failed workers are restarted (FailureConfig). At the end rank 0 writes
a bundle. The runner knows no model by name: everything model-specific comes from the recipe.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

import numpy as np

from factory import storage
from factory.config import TrainConfig, TrainDataConfig

log = logging.getLogger(__name__)
STATE_NAME = "runner_state.json"


# --- driver side --------------------------------------------------------------------------------

def open_training_data(data: TrainDataConfig):
    if data.source == "phantom-cxr":
        from factory.data.phantoms.dataset import PhantomCxrDataset

        return PhantomCxrDataset(data.count, size=data.size, seed=data.seed)
    from factory.data.adapters import open_dataset

    return open_dataset(data.path, data.layout, size=data.size, skip_bad=data.skip_bad)


def prepare_data(config: TrainConfig, progress: bool = True) -> tuple[str, dict]:
    """The run's data cache and vocabulary, built once and reused by every worker and every restart."""
    from factory.data.cache import CachedDataset, write_cache
    from factory.data.text.vocab import Vocabulary
    from factory.errors import BadInputError

    run_url = storage.join(config.storage_path, config.name)
    cache_url = storage.join(run_url, "data.zarr")
    try:
        cache = CachedDataset(cache_url)
    except BadInputError:
        cache = write_cache(open_training_data(config.data), cache_url, progress=progress)
    vocabulary_url = storage.join(run_url, "vocabulary.json")
    if storage.exists(vocabulary_url):
        vocabulary = json.loads(storage.read_bytes(vocabulary_url))
    else:
        texts = [str(r) for r, has in zip(cache.reports, cache.has_report) if has]
        vocabulary = Vocabulary.build(texts, min_count=config.data.min_word_count).to_json()
        storage.atomic_put(vocabulary_url, json.dumps(vocabulary).encode())
    return cache_url, vocabulary


def _ray_storage(config: TrainConfig) -> tuple[str, Any]:
    """Ray Train's storage path and filesystem: S3 goes through our fsspec settings (endpoint, keys)."""
    if storage.protocol_of(config.storage_path) in ("file",):
        return os.path.abspath(config.storage_path.removeprefix("file://")), None
    import pyarrow.fs

    fs, path = storage.filesystem(config.storage_path)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def train(config: TrainConfig, progress: bool = True):
    """Run (or resume) training; returns Ray Train's Result."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    config = config.model_copy(update={
        "storage_path": storage.absolute(config.storage_path),
        "bundle_out": storage.absolute(config.bundle_out) if config.bundle_out else None})
    cache_url, vocabulary = prepare_data(config, progress)
    if not ray.is_initialized():
        # Workers' and controllers' logs stay in Ray's log folder; failures reach the driver as exceptions.
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    storage_path, filesystem = _ray_storage(config)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": config.model_dump(mode="json"), "cache_url": cache_url, "vocabulary": vocabulary},
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": config.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        run_config=RunConfig(
            name=config.name, storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}},
        ),
    )
    return trainer.fit()


# --- worker side ---------------------------------------------------------------------------------

class DeepSpeedEngine:
    """A DeepSpeed engine behind the recipes' Engine protocol (factory.train.engines)."""

    def __init__(self, module, optimizer, ds_config: dict):
        import deepspeed

        self.engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config)

    @property
    def module(self):
        return self.engine.module

    def __call__(self, *args, **kwargs):
        import torch

        # A network that is not being stepped (frozen, or under no_grad) runs as a plain module: the
        # engine's forward would hook its outputs, and another engine's backward through them would then
        # run this engine's backward machinery (an error at ZeRO-0, a reduction of nothing at ZeRO-2).
        if not torch.is_grad_enabled() or not any(p.requires_grad for p in self.engine.module.parameters()):
            return self.engine.module(*args, **kwargs)
        return self.engine(*args, **kwargs)

    def backward(self, loss) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()  # optimizer step, gradient clipping and zeroing, as configured

    def parameters(self):
        return self.engine.module.parameters()

    def save(self, directory: str, tag: str) -> None:
        self.engine.save_checkpoint(directory, tag=tag)

    def load(self, directory: str, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(directory, tag=tag)
        if path is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed checkpoint {tag}")


def deepspeed_config(config: TrainConfig) -> dict:
    ds = {
        "train_micro_batch_size_per_gpu": config.batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": config.zero_stage},
        # Recipes pass torch's Adam (the paper's settings per network); DeepSpeed's fused CPU/GPU Adam
        # would need compiled ops. ZeRO partitions torch optimisers' state fine.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if config.grad_clip:
        ds["gradient_clipping"] = config.grad_clip
    if config.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif config.precision == "fp16":
        ds["fp16"] = {"enabled": True, "initial_scale_power": 12}
    return ds


def _worker_loop(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from factory.data.cache import CachedDataset
    from factory.data.text.vocab import Vocabulary
    from factory.train.recipes import get_recipe

    config = TrainConfig.model_validate(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    cache = CachedDataset(loop_config["cache_url"])
    images, labels = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in cache.arrays())
    reports = [str(r) for r in cache.reports]
    vocabulary = Vocabulary.from_json(loop_config["vocabulary"], "vocabulary.json")
    mine = np.arange(rank, len(reports), world)  # this worker's share of the studies

    recipe = get_recipe(config.recipe)
    model_config = recipe.model_config(config.model, vocabulary, cache.label_names, int(images.shape[-1]))
    nets = recipe.build(model_config, seed=config.seed)  # same initial weights on every rank
    ds_config = deepspeed_config(config)
    engines = {}
    for name, net in nets.items():
        optimizer = torch.optim.Adam(net.to(device).parameters(), **recipe.optimizer_config(name))
        engines[name] = DeepSpeedEngine(net, optimizer, ds_config)

    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            for name, engine in engines.items():
                engine.load(directory, tag=name)
            with open(os.path.join(directory, STATE_NAME)) as f:
                start = json.load(f)["step"]
    generator = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + rank * 7919 + start)
    metrics: dict[str, float] = {}
    for step in range(start, config.steps):
        rng = np.random.default_rng([config.seed, rank, step])
        index = np.sort(rng.choice(mine, size=min(config.batch_size, len(mine)), replace=False))
        batch = recipe.batch(images[index], labels[index], [reports[i] for i in index], index, vocabulary)
        metrics = recipe.train_step(engines, batch, step, generator)
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            with tempfile.TemporaryDirectory() as directory:
                for name, engine in engines.items():
                    engine.save(directory, tag=name)  # collective: every rank writes its ZeRO partition
                if rank == 0:
                    with open(os.path.join(directory, STATE_NAME), "w") as f:
                        json.dump({"step": done, "config": config.model_dump(mode="json"),
                                   "model_config": model_config}, f)
                ray.train.report({"step": done, "resumed_from": start, **metrics},
                                 checkpoint=ray.train.Checkpoint.from_directory(directory))
    if rank == 0 and config.bundle_out:
        export(config, recipe.name, {n: e.module for n, e in engines.items()}, model_config, cache, vocabulary,
               {"steps": config.steps, **metrics})


def export(config: TrainConfig, recipe: str, nets, model_config: dict, cache, vocabulary, metrics: dict) -> dict:
    """Write the trained networks as a bundle (safetensors + validated metadata + sha256)."""
    import hashlib

    from factory.models.bundle import write_bundle

    fingerprint = hashlib.sha256()
    for study_id in cache.study_ids:
        fingerprint.update(str(study_id).encode() + b"\0")
    fingerprint.update(np.ascontiguousarray(cache.labels[:]).tobytes())
    positives = np.nan_to_num(np.asarray(cache.labels[:]), nan=0.0) == 1
    combos, counts = np.unique(positives, axis=0, return_counts=True)
    prior = [{"labels": [n for n, on in zip(cache.label_names, combo) if on] or ["No Finding"],
              "share": float(c / counts.sum())} for combo, c in zip(combos, counts)]
    return write_bundle(
        config.bundle_out, recipe, nets, model_config, list(cache.label_names), vocabulary.to_json(),
        training_data={"fingerprint": fingerprint.hexdigest(), "count": len(cache),
                       "description": config.data.model_dump_json(), "label_prior": prior},
        metrics={k: float(v) for k, v in metrics.items()}, trained=True)
