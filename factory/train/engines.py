"""The engine protocol recipes train through, and its plain-torch implementation.

A recipe never calls an optimiser or `loss.backward()` itself: it calls `engine(...)` (forward),
`engine.backward(loss)` and `engine.step()`. DeepSpeed's engine already has that shape (the runner
wraps it to this protocol), so one recipe runs under plain torch, DDP and DeepSpeed ZeRO alike.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Mapping, Protocol, runtime_checkable

import torch
from torch import nn


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
