"""The engine protocol recipes train through, and its implementations: plain torch, DDP, DeepSpeed.

A recipe never calls an optimiser or `loss.backward()` itself: it calls `engine(...)` (forward),
`engine.backward(loss)` and `engine.step()`. DeepSpeed's engine already has that shape
(`DeepSpeedEngine` wraps it to this protocol), so one recipe runs under plain torch (`TorchEngine`),
torch's DistributedDataParallel (`DDPEngine`) and DeepSpeed ZeRO alike.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterable, Iterator, Mapping, Protocol, runtime_checkable

import torch
from torch import nn

from factory.config import TrainConfig


@runtime_checkable
class Engine(Protocol):
    module: nn.Module

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> None:
        """Optimiser step, then zero the gradients."""

    def parameters(self) -> Iterable[nn.Parameter]: ...

    def set_lr(self, lr: float) -> None:
        """Learning rate of every parameter group, from the next step on (schedules live in recipes)."""

    @property
    def lr(self) -> float: ...


class TorchEngine:
    """One network and its optimiser; optional gradient-norm clipping before each step."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, clip: float | None = None):
        self.module = module
        self.optimizer = optimizer
        self.clip = clip

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.clip is not None:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.module.parameters()

    def set_lr(self, lr: float) -> None:
        set_param_group_lr(self.optimizer, lr)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


class DDPEngine(TorchEngine):
    """One network under torch DistributedDataParallel with its own torch optimiser: the plain-DDP
    baseline of the DeepSpeed engines (same protocol, same recipe, gradients averaged over ranks
    during the backward, optional gradient-norm clipping before the step).

    A network that is not being stepped (under no_grad, or every parameter frozen) runs as the plain
    module, as the DeepSpeed engine does: it gets no gradients, so there is nothing to reduce, and
    DDP's forward would only arm its reducer for gradients that never come. Several forwards before
    one backward (EMIXER's F reads real reports, then writes fake ones) are fine: DDP's hooks sit on
    the parameters' gradient accumulators, which fire once per backward with the sum over every use.
    Buffers (batch-norm statistics, spectral-norm vectors) are not broadcast at each forward
    (broadcast_buffers=False), as DeepSpeed does not: each rank keeps its own, and rank 0's are the
    ones exported. Checkpoints hold the module's and the optimiser's state dicts, written by rank 0
    (every rank holds the same after each step) and read with torch.load(weights_only=True).
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, clip: float | None = None):
        from torch.nn.parallel import DistributedDataParallel

        if not torch.distributed.is_initialized():
            raise RuntimeError("DDPEngine needs an initialised torch.distributed process group")
        super().__init__(module, optimizer, clip)
        device = next(module.parameters()).device
        self.ddp = DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                           broadcast_buffers=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.ddp(*args, **kwargs) if stepped(self.module) else self.module(*args, **kwargs)

    # backward, step, parameters and learning rates are TorchEngine's: DDP's hooks all-reduce (average)
    # the gradients bucket by bucket during the plain loss.backward().

    @staticmethod
    def checkpoint_path(directory: str, tag: str) -> str:
        return os.path.join(directory, f"{tag}.ddp.pt")

    def save(self, directory: str, tag: str) -> None:
        if torch.distributed.get_rank() == 0:
            torch.save({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict()},
                       self.checkpoint_path(directory, tag))

    def load(self, directory: str, tag: str) -> None:
        path = self.checkpoint_path(directory, tag)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{directory}: no DDP checkpoint for {tag} ({os.path.basename(path)})")
        state = torch.load(path, map_location=next(self.module.parameters()).device, weights_only=True)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])


def _skip_inference_shared_memory_op() -> None:
    """On a CPU accelerator DeepSpeed's communication backend JIT-compiles its shared-memory kernel the
    first time it starts on a machine (about 45 CPU-seconds; again for every new virtual environment).
    That kernel serves only `inference_all_reduce` (tensor-parallel inference); training's gradient
    all-reduce goes through torch.distributed (gloo), so it is marked unavailable and never built."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class DeepSpeedEngine:
    """A DeepSpeed engine behind the Engine protocol; `deepspeed_config` gives its settings."""

    def __init__(self, module, optimizer, ds_config: dict):
        import deepspeed

        _skip_inference_shared_memory_op()
        self.engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config)
        low = next((dtype for key, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16))
                    if ds_config.get(key, {}).get("enabled")), None)
        if low is not None:
            # ZeRO's half-precision flat buffers convert the parameters only: buffers that meet them in
            # arithmetic (spectral norm's u and v vectors) must follow, or the first forward fails.
            for buffer in self.engine.module.buffers():
                if buffer.is_floating_point():
                    buffer.data = buffer.data.to(low)

    @property
    def module(self):
        return self.engine.module

    def __call__(self, *args, **kwargs):
        # A network that is not being stepped (frozen, or under no_grad) runs as a plain module: the
        # engine's forward would hook its outputs, and another engine's backward through them would then
        # run this engine's backward machinery (an error at ZeRO-0, a reduction of nothing at ZeRO-2).
        return self.engine(*args, **kwargs) if stepped(self.engine.module) else self.engine.module(*args, **kwargs)

    def backward(self, loss) -> None:
        self.engine.backward(loss)

    def set_lr(self, lr: float) -> None:
        set_param_group_lr(self.engine.optimizer, lr)

    @property
    def lr(self) -> float:
        return float(self.engine.optimizer.param_groups[0]["lr"])

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
    """DeepSpeed's settings from a training config: its ZeRO stage, precision and clipping."""
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


def stepped(module: nn.Module) -> bool:
    """Whether this forward can lead to a step of `module`: gradients on, and some parameter trainable."""
    return torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())


def set_param_group_lr(optimizer, lr: float) -> None:
    """Set `lr` on every parameter group: torch optimisers and DeepSpeed's wrappers (ZeRO 1/2, bf16, fp16
    optimisers promote their inner optimiser's param_groups) read it at their next step."""
    for group in optimizer.param_groups:
        group["lr"] = float(lr)


def apply_learning_rates(engines: Mapping[str, "Engine"], rates: Mapping[str, float]) -> None:
    """Set each named engine's learning rate (a recipe's `learning_rates(step, total)`)."""
    unknown = sorted(set(rates) - set(engines))
    if unknown:
        raise KeyError(f"learning rates for engines that do not exist: {unknown}")
    for name, lr in rates.items():
        engines[name].set_lr(lr)


def torch_engines(nets: Mapping[str, nn.Module], optimizer_config, clip: float | None = None) -> dict[str, TorchEngine]:
    """A TorchEngine with Adam per network; `optimizer_config(name)` gives its lr and betas."""
    return {name: TorchEngine(net, torch.optim.Adam(net.parameters(), **optimizer_config(name)), clip)
            for name, net in nets.items()}


@contextlib.contextmanager
def frozen(*engines: Engine) -> Iterator[None]:
    """Set requires_grad False on the engines' parameters for the block, then restore each flag.

    Used around every backward for the engines that are not stepped: their parameters then get no
    gradient, which DeepSpeed ZeRO-2 requires ("gradient computed twice" otherwise)."""
    saved = [(p, p.requires_grad) for engine in engines for p in engine.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
