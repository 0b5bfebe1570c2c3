"""factory.seeding: a seeded block of torch's global generator that leaves the caller's state alone."""

from __future__ import annotations

import torch

from factory.seeding import global_rng_seeded


def test_block_draws_from_the_seed_and_the_caller_state_is_restored():
    before = torch.random.get_rng_state()
    with global_rng_seeded(5):
        first = torch.rand(3)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.rand(7)
    with global_rng_seeded(5, "cpu"):
        assert torch.equal(torch.rand(3), first)
    with global_rng_seeded(6):
        assert not torch.equal(torch.rand(3), first)
