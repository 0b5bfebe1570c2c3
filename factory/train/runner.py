"""Ray Train + DeepSpeed runner: any recipe, N workers, one DeepSpeed engine per network.

The driver decodes the training data parts the recipe asks for once into Zarr caches and keeps the
recipe's data info (e.g. a vocabulary), all under the run's storage path (factory.train.data); then
a `TorchTrainer` starts N workers (gloo on CPU, nccl on GPU). Each worker reads the caches, asks the
recipe for its networks, wraps each one in its own DeepSpeed engine (ZeRO stage, precision and
clipping from the config) or, with `engine: ddp`, in torch DistributedDataParallel with a torch
optimiser (factory.train.engines.DDPEngine, the plain baseline), and before every step sets the engines' learning rates from the recipe's
schedule, samples a batch of each part from its share and runs the recipe's step. Every
`checkpoint_every` steps all engines save through `ray.train.Checkpoint` into the run's storage,
with the recipe's own per-worker state (e.g. an image pool); a run started again under the same name
resumes from the newest checkpoint and continues its step count, and failed workers are restarted
(FailureConfig). Every `log_every` steps, at each checkpoint and once before the first step the
workers report rank 0's metrics through Ray Train; the controller writes them to the run's TensorBoard
events and the driver draws them as a progress bar (factory.train.progress). At the end rank 0 writes a bundle, and returns (Result.return_value) how the run
went: the seconds each step took on rank 0 and every worker's peak memory (`run_stats`), which the
training benchmarks read. The runner knows no model by name: everything model-specific comes from
the recipe (factory.train.recipes.Recipe).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import tempfile
import time
from typing import Any

import numpy as np

from factory import storage
from factory.config import TrainConfig
from factory.raytools import connect_ray, ray_worker_env
from factory.train.data import TrainingData, fingerprint, load_training_data, prepare_data

log = logging.getLogger(__name__)
STATE_NAME = "runner_state.json"
RECIPE_STATE_NAME = "recipe_state_rank{rank}.safetensors"  # per worker: each keeps its own


# --- driver side --------------------------------------------------------------------------------

def _ray_storage(config: TrainConfig) -> tuple[str, Any]:
    """Ray Train's storage path and filesystem: S3 goes through our fsspec settings (endpoint, keys)."""
    if storage.protocol_of(config.storage_path) in ("file",):
        return os.path.abspath(config.storage_path.removeprefix("file://")), None
    import pyarrow.fs

    fs, path = storage.filesystem(config.storage_path)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def train(config: TrainConfig, progress: bool = True):
    """Run (or resume) training; returns Ray Train's Result. `progress`: a bar on stderr while it runs
    (the run's TensorBoard events are written either way)."""
    import contextlib

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from factory.errors import BadInputError
    from factory.train.progress import ProgressBar, TrainingMonitor, events_url
    from factory.train.recipes import get_recipe

    config = config.model_copy(update={
        "storage_path": storage.absolute(config.storage_path),
        "bundle_out": storage.absolute(config.bundle_out) if config.bundle_out else None})
    try:
        recipe = get_recipe(config.recipe)
    except KeyError as err:
        raise BadInputError("recipe", err.args[0]) from err
    # Unusable locations are refused before the data is cached and before Ray starts.
    storage.check_writable(config.storage_path)
    if config.bundle_out:
        storage.check_writable(config.bundle_out)
    if hasattr(recipe, "check_steps"):  # a recipe whose schedule bounds the run's length
        try:
            recipe.check_steps(config.model, config.steps)
        except ValueError as err:
            raise BadInputError("model", str(err)) from err
    prepared = prepare_data(config, recipe, progress)
    ray = connect_ray()
    storage_path, filesystem = _ray_storage(config)
    bar = (ProgressBar(ray, config.name, config.steps, getattr(recipe, "progress_metrics", None)) if progress
           else contextlib.nullcontext())
    monitor = TrainingMonitor(events_url(config.storage_path, config.name), config.steps,
                              bar.inbox if progress else None)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": config.model_dump(mode="json"), "data": prepared},
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": config.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        run_config=RunConfig(
            name=config.name, storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": ray_worker_env()},
            callbacks=[monitor],
        ),
    )
    with bar:
        return trainer.fit()


# --- worker side ---------------------------------------------------------------------------------

def make_engines(config: TrainConfig, recipe, nets: dict, device) -> dict:
    """An engine per network, as the config says: DeepSpeed (its ZeRO stage, precision, clipping) or DDP."""
    import torch

    from factory.train.engines import DDPEngine, DeepSpeedEngine, deepspeed_config

    ds_config = deepspeed_config(config) if config.engine == "deepspeed" else None
    engines = {}
    for name, net in nets.items():
        optimizer = torch.optim.Adam(net.to(device).parameters(), **recipe.optimizer_config(name))
        if config.engine == "ddp":
            engines[name] = DDPEngine(net, optimizer, clip=config.grad_clip)
        else:
            engines[name] = DeepSpeedEngine(net, optimizer, ds_config)
    return engines


def peak_memory_mb() -> dict[str, float]:
    """This process's peak resident memory (VmHWM, from getrusage) and, on a GPU, peak allocated CUDA memory."""
    import torch

    peak = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux reports KiB
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def run_stats(start: int, setup_s: float, step_seconds: list[float], step_cpu_s: float) -> dict[str, Any]:
    """What rank 0 returns (JSON-able): the step it started from, seconds from entering the worker loop to
    the first step (data, networks, engines, checkpoint), each step's seconds on rank 0, and by rank:
    peak memory and the CPU seconds its process spent in steps. Collective: every rank sends its own."""
    import torch.distributed as dist

    workers = [None] * dist.get_world_size()
    dist.all_gather_object(workers, {**peak_memory_mb(), "step_cpu_s": step_cpu_s})
    return {"start_step": start, "setup_s": setup_s, "step_seconds": step_seconds, "workers": workers}


def _worker_loop(loop_config: dict) -> dict[str, Any] | None:
    import ray.train
    import ray.train.torch
    import torch

    from factory.train.engines import apply_learning_rates
    from factory.train.progress import RESUMED_FROM, STEP, STEPS_PER_SECOND
    from factory.train.recipes import get_recipe

    entered = time.perf_counter()
    config = TrainConfig.model_validate(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    data = load_training_data(loop_config["data"])
    shares = {}  # this worker's share of each part's studies
    for name, part in data.parts.items():
        if len(part) < world:
            raise ValueError(f"training data part {name!r} has {len(part)} studies, fewer than {world} workers")
        shares[name] = np.arange(rank, len(part), world)

    recipe = get_recipe(config.recipe)
    model_config = recipe.model_config(config.model, data)
    nets = recipe.build(model_config, seed=config.seed)  # same initial weights on every rank
    if config.start_from:  # before any checkpoint, which then overrides it; the record stays for the export
        from factory.models.bundle import load_bundle

        if not hasattr(recipe, "start_from"):
            raise ValueError(f"recipe {config.recipe!r} cannot start from a bundle")
        recipe.start_from(nets, load_bundle(config.start_from), data)
    engines = make_engines(config, recipe, nets, device)

    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            with open(os.path.join(directory, STATE_NAME)) as f:
                state = json.load(f)
            check_resumable(state, config)
            for name, engine in engines.items():
                engine.load(directory, tag=name)
            start = state["step"]
            _load_recipe_state(recipe, directory, rank)
    generator = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + rank * 7919 + start)
    metrics: dict[str, float] = {}
    step_seconds: list[float] = []  # each step's wall time, checkpointing left out
    step_cpu_s = 0.0  # this process's CPU time in those steps (all its threads)
    setup_s = time.perf_counter() - entered
    # Every rank reports the same number of times (a report is a barrier); only rank 0's metrics count.
    ray.train.report({STEP: start, RESUMED_FROM: start})
    window_began, window_start = time.perf_counter(), start  # steps/s since the previous report
    for step in range(start, config.steps):
        began, began_cpu = time.perf_counter(), time.process_time()
        rng = np.random.default_rng([config.seed, rank, step])
        indices = {name: np.sort(rng.choice(share, size=min(config.batch_size, len(share)), replace=False))
                   for name, share in shares.items()}
        # The schedule is a function of the step alone, so a resumed run continues it exactly.
        apply_learning_rates(engines, recipe.learning_rates(step, config.steps))
        metrics = recipe.train_step(engines, recipe.batch(data, indices), step, generator)
        metrics.update({f"lr_{name}": engine.lr for name, engine in engines.items()})
        step_seconds.append(time.perf_counter() - began)
        step_cpu_s += time.process_time() - began_cpu
        done = step + 1
        reported = {STEP: done, RESUMED_FROM: start, **metrics,
                    STEPS_PER_SECOND: (done - window_start) / (time.perf_counter() - window_began)}
        if done % config.checkpoint_every == 0 or done == config.steps:
            with tempfile.TemporaryDirectory() as directory:
                for name, engine in engines.items():
                    engine.save(directory, tag=name)  # collective: every rank writes its ZeRO partition
                _save_recipe_state(recipe, directory, rank)
                if rank == 0:
                    with open(os.path.join(directory, STATE_NAME), "w") as f:
                        json.dump({"step": done, "config": config.model_dump(mode="json"),
                                   "model_config": model_config}, f)
                ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(directory))
            window_began, window_start = time.perf_counter(), done
        elif done % config.log_every == 0:
            ray.train.report(reported)
            window_began, window_start = time.perf_counter(), done
        if rank == 0 and config.snapshot_every and done % config.snapshot_every == 0:
            export(snapshot_url(config, done), config, recipe, {n: e.module for n, e in engines.items()},
                   model_config, data, {"steps": done, **metrics})
    stats = run_stats(start, setup_s, step_seconds, step_cpu_s)
    if rank == 0 and config.bundle_out:
        export(config.bundle_out, config, recipe, {n: e.module for n, e in engines.items()}, model_config, data,
               {"steps": config.steps, **metrics})
    return stats if rank == 0 else None


def check_resumable(state: dict, config: TrainConfig) -> None:
    """A checkpoint's engine state is only readable by the engine that wrote it (DeepSpeed's layout vs
    DDP's state dicts): say so instead of failing on a missing file."""
    saved = state["config"].get("engine", "deepspeed")
    if saved != config.engine:
        raise ValueError(f"run {config.name!r} was checkpointed with engine {saved}; "
                         f"resume it with engine: {saved}, or start a new run name")


def _save_recipe_state(recipe, directory: str, rank: int) -> None:
    from safetensors.torch import save_file

    state = recipe.state_dict()
    if state:
        save_file({key: value.detach().cpu().contiguous() for key, value in state.items()},
                  os.path.join(directory, RECIPE_STATE_NAME.format(rank=rank)))


def _load_recipe_state(recipe, directory: str, rank: int) -> None:
    from safetensors.torch import load_file

    path = os.path.join(directory, RECIPE_STATE_NAME.format(rank=rank))
    if os.path.exists(path):
        recipe.load_state_dict(load_file(path))
    elif any(name.startswith("recipe_state_rank") for name in os.listdir(directory)):
        # Resumed with more workers than were saved: this rank starts its recipe state afresh.
        log.warning("checkpoint has no recipe state for rank %d; starting it afresh", rank)


def snapshot_url(config: TrainConfig, step: int) -> str:
    """Where `snapshot_every` puts the bundle of `step`: inside the run's folder."""
    return storage.join(config.storage_path, config.name, "snapshots", f"step-{step:06d}")


def export(url: str, config: TrainConfig, recipe, nets, model_config: dict, data: TrainingData,
           metrics: dict) -> dict:
    """Write the trained networks as a bundle (safetensors + validated metadata + sha256) at `url`."""
    from factory.models.bundle import write_bundle

    described = recipe.export_metadata(data)
    training_data = {"fingerprint": fingerprint(data), "count": sum(len(p) for p in data.parts.values()),
                     "description": config.data.model_dump_json(), **described.get("training_data", {})}
    return write_bundle(
        url, recipe.name, nets, model_config, list(described["label_names"]),
        described.get("vocabulary"), training_data=training_data,
        metrics={k: float(v) for k, v in metrics.items()}, trained=True)
