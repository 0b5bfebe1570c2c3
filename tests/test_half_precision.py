"""DeepSpeed in bf16 on CPU (torch runs bf16 there): the dtype logic of a half-precision training step
for EMIXER and DUIIT (the models with spectral norm), checked without a GPU. ZeRO's half-precision buffers convert parameters but
not module buffers; spectral norm's power iteration multiplies the two."""

from __future__ import annotations

from gloo_script import run_as_rank_zero

BF16_STEP = r"""
import sys, torch, torch.distributed as dist
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[1], rank=0, world_size=1)
from factory.config import TrainConfig
from factory.train.engines import DeepSpeedEngine, deepspeed_config
from factory.train.recipes import get_recipe

g = torch.Generator().manual_seed(0)
TINY = {
    "emixer": dict(image_size=32, g_width=4, d_width=4, f_width=4, class_embedding=8, vocab_size=20, max_sentences=3,
                   max_words=5, image_feature=8, word_embedding=8, hidden=8, word_layers=1, d_text_hidden=8),
    "duiit": dict(image_size=32, g_width=4, g_blocks=1, d_width=4, pool_size=2),
}
BATCH = {
    "emixer": {"image": torch.rand(4, 1, 32, 32, generator=g) * 2 - 1, "labels": (torch.rand(4, 9, generator=g) < 0.4).float(),
               "labelled": torch.tensor([True] * 4), "report": torch.randint(4, 20, (4, 3, 5), generator=g)},
    "duiit": {**{m: torch.rand(4, 1, 32, 32, generator=g) * 2 - 1 for m in ("ct", "mri", "pet")},
              **{f"{m}_age": torch.randn(4, generator=g) for m in ("ct", "mri", "pet")}},
}
for name in ("emixer", "duiit"):
    for stage in (0, 2):
        recipe = get_recipe(name)
        nets = recipe.build(TINY[name], seed=0)
        config = TrainConfig(name="bf16", storage_path="unused", steps=1, batch_size=4, zero_stage=stage,
                             precision="bf16", use_gpu=True)
        engines = {n: DeepSpeedEngine(net, torch.optim.Adam(net.parameters(), **recipe.optimizer_config(n)),
                                      deepspeed_config(config)) for n, net in nets.items()}
        metrics = recipe.train_step(engines, BATCH[name], 0, torch.Generator().manual_seed(1))
        dtypes = {p.dtype for e in engines.values() for p in e.parameters()}
        finite = all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
        print("step", name, stage, sorted(str(d) for d in dtypes), finite, len(metrics), flush=True)
"""


def test_a_bf16_deepspeed_step_runs_for_emixer_and_duiit():
    result = run_as_rank_zero(BF16_STEP)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split(maxsplit=3) for line in result.stdout.splitlines() if line.startswith("step")]
    assert [(name, int(stage)) for _, name, stage, _ in lines] == [("emixer", 0), ("emixer", 2), ("duiit", 0),
                                                                    ("duiit", 2)]
    for *_, rest in lines:
        assert rest.startswith("['torch.bfloat16'] True"), rest
