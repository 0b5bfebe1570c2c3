"""What the recipe tests share: parameter snapshots, which tensors a step changed, and a spy on every
engine's backward."""

from __future__ import annotations

import torch

from factory.train.engines import TorchEngine


def parameters(nets):
    """A detached copy of every network's parameters, by network and parameter name."""
    return {name: {k: v.detach().clone() for k, v in net.named_parameters()} for name, net in nets.items()}


def changed(before, after, name):
    """The parameters of network `name` that differ between two snapshots."""
    return [k for k in before[name] if not torch.equal(before[name][k], after[name][k])]


def spy_on_backwards(engines):
    """Replace each of `engines` (a dict, changed in place) by a spy; returns the list each backward
    appends (engine name, names of the engines that had trainable parameters) to. A backward that puts
    a gradient on another engine's parameters fails the test."""
    calls = []

    class Spy(TorchEngine):
        def backward(self, loss):
            trainable = {n for n, e in engines.items() if any(p.requires_grad for p in e.parameters())}
            calls.append((self.name, trainable))
            super().backward(loss)
            others = [p.grad for n, e in engines.items() if n != self.name for p in e.parameters()]
            assert all(g is None for g in others), f"{self.name}'s backward reached other networks"

    for name, engine in list(engines.items()):
        spy = Spy(engine.module, engine.optimizer)
        spy.name = name
        engines[name] = spy
    return calls
