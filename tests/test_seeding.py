"""factory.seeding: a seeded block of torch's global generator that leaves the caller's state alone, and
a block on one torch thread; seeded networks do not depend on the thread count."""

from __future__ import annotations

import torch

from factory.seeding import global_rng_seeded, one_torch_thread


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


def test_one_thread_block_restores_the_count_even_on_error():
    torch.set_num_threads(2)
    try:
        with one_torch_thread():
            assert torch.get_num_threads() == 1
            raise KeyError("inside")
    except KeyError:
        pass
    assert torch.get_num_threads() == 2


def test_seeded_emixer_weights_do_not_depend_on_the_thread_count():
    """EMIXER's spectral norms run a power iteration at construction; on AVX-512 CPUs its rounding followed
    the thread count (1 and 2 threads gave different initial weights) until networks were built on one."""
    from factory.models.registry import build_networks, make_config

    config = make_config("emixer", {"image_size": 32, "g_width": 4, "d_width": 4})
    threads = torch.get_num_threads()
    built = []
    for count in (1, 2):
        torch.set_num_threads(count)
        nets = build_networks("emixer", config, seed=4)
        built.append({f"{n}.{k}": v for n, net in nets.items() for k, v in net.state_dict().items()})
    torch.set_num_threads(threads)
    assert built[0].keys() == built[1].keys()
    assert all(torch.equal(built[0][k], built[1][k]) for k in built[0])
