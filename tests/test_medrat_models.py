"""MedRAT in process: the contrastive loss on hand-checkable cases, the shared memory's top-K, pooling
over padded reports, a training step through torch engines, the Captioning product and bundles."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from factory.data.labels import CXR_LABELS
from factory.data.text.vocab import Vocabulary
from factory.models import medrat
from factory.models.bundle import load_bundle
from factory.models.cli import init_bundle
from factory.models.registry import build_networks, spec
from factory.models.spec import Captioning
from factory.train.engines import torch_engines
from factory.train.recipes import get_recipe
from factory.train.recipes.medrat import make_batch

TINY = {"cnn_width": 4, "d_model": 16, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "ff_dim": 16,
        "memory_size": 8, "memory_top_k": 2, "class_hidden": 8, "max_words": 24, "image_size": 32,
        "patch_grid": 4, "vocab_size": 30, "report_beam": 1}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small networks run faster on one thread than on two that wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def labels_of(*findings: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor([[1.0 if name in names else 0.0 for name in CXR_LABELS] for names in findings])


def test_studies_sharing_one_finding_are_a_positive_pair_and_others_negative():
    labels = labels_of(("Cardiomegaly", "Edema"), ("Edema",), ("Pleural Effusion",),
                       ("Pleural Effusion", "Pneumothorax"), ("No Finding",), ("No Finding",), ())
    positive = medrat.positive_pairs(labels)
    assert positive[0, 1] and positive[1, 0]  # Edema shared
    assert positive[2, 3]  # Pleural Effusion shared
    assert not positive[0, 2] and not positive[1, 3] and not positive[0, 4]  # nothing shared
    assert positive[4, 5] and not positive[4, 0]  # two all-normal studies share No Finding
    assert not positive[6].any() and not positive.diagonal().any()  # no label, no positive; never itself


def test_contrastive_loss_by_hand():
    # A {Cardiomegaly, Edema} and B {Edema} share a finding, as do C {Effusion} and D {Effusion,
    # Pneumothorax}; A, B point along x, C, D along y; tau 1. Each anchor's one positive has similarity 1
    # and its two negatives 0: the loss is -log(e / (e + 1 + 1)) for every anchor.
    labels = labels_of(("Cardiomegaly", "Edema"), ("Edema",), ("Pleural Effusion",),
                       ("Pleural Effusion", "Pneumothorax"))
    z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])  # normalised inside
    assert medrat.supcon_loss(z, labels, temperature=1.0).item() == pytest.approx(math.log(math.e + 2) - 1)
    # Were B's finding Pneumothorax instead, A would have no positive (left out) and B would pair with D.
    relabelled = labels_of(("Cardiomegaly", "Edema"), ("Pneumothorax",), ("Pleural Effusion",),
                           ("Pleural Effusion", "Pneumothorax"))
    b = -math.log(1 / (math.e + 2))  # B's positive D has similarity 0; its negatives A (1) and C (0)
    c = -math.log(math.e / (math.e + 2))  # C: positive D (1), negatives A (0), B (0)
    d = (-math.log(1 / (math.e + 2)) - math.log(math.e / (math.e + 2))) / 2  # D: positives B (0) and C (1)
    assert medrat.supcon_loss(z, relabelled, temperature=1.0).item() == pytest.approx((b + c + d) / 3)
    # Nothing shared anywhere: zero, with a graph.
    alone = medrat.supcon_loss(z.requires_grad_(), labels_of(("Edema",), ("Pneumothorax",), (), ()), 1.0)
    assert alone.item() == 0.0 and alone.requires_grad


def test_shared_memory_reads_only_the_top_k_vectors():
    memory = medrat.SharedMemory(size=8, dim=4, top_k=2)
    out = memory(torch.randn(1, 1, 4))
    out.sum().backward()
    assert out.shape == (1, 1, 4)
    assert int((memory.memory.grad.abs().sum(dim=1) > 0).sum()) == 2  # the K queried vectors are updated


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_networks("medrat", TINY, seed=0)


def test_a_reports_global_representation_ignores_its_padding(model):
    net = model["medrat"].eval()
    report = torch.tensor([[Vocabulary.bos_id, 7, 8, 9, Vocabulary.eos_id]])
    padded = torch.cat([report, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    with torch.no_grad():
        short, long = net.encode_reports(report)[1], net.encode_reports(padded)[1]
    assert torch.allclose(short, long, atol=1e-5)


def test_a_training_step_gives_every_parameter_a_gradient_and_repeats_for_a_seed():
    recipe = get_recipe("medrat")
    vocabulary = Vocabulary([f"w{i}" for i in range(26)])
    reports = ["w1 w2 w3.", "w4 w5.", "w6 w7 w8 w9.", "w1 w9."]
    labels = labels_of(("Edema",), ("No Finding",), ("Edema", "Cardiomegaly"), ("Pneumothorax",))

    def run():
        nets = recipe.build(TINY, seed=0)
        engines = torch_engines(nets, recipe.optimizer_config)
        batch = make_batch(torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1, labels,
                           reports, labels.flip(0), vocabulary, recipe.config)
        before = {k: v.detach().clone() for k, v in nets["medrat"].named_parameters()}
        metrics = recipe.train_step(engines, batch, 0, torch.Generator().manual_seed(2))
        still = [k for k, v in nets["medrat"].named_parameters() if torch.equal(before[k], v)]
        return metrics, still

    metrics, still = run()
    assert metrics.keys() == {"lang", "contrast", "class_image", "class_report"}
    assert all(math.isfinite(v) for v in metrics.values())
    assert still == []  # every parameter moved: DDP and DeepSpeed need a gradient on each
    assert run()[0] == metrics


def test_local_augmentation_hides_about_p_of_the_locals_and_keeps_pads_hidden(model):
    net = model["medrat"]
    locals_ = torch.zeros(64, 20, 16)
    padding = torch.zeros(64, 20, dtype=torch.bool)
    padding[:, 15:] = True
    _, hidden = net.augment(locals_, padding, torch.Generator().manual_seed(0))
    assert hidden[:, 15:].all()
    assert abs(hidden[:, :15].float().mean().item() - net.local_dropout) < 0.05


def test_caption_is_a_function_of_each_image_alone(model):
    product = spec("medrat").product(Captioning)
    films = (np.random.default_rng(0).random((3, 48, 48)) * 255).astype(np.uint8)  # resized to 32
    ids = product.caption(model, films)
    assert ids.shape == (3, TINY["max_words"] - 1) and ids.dtype == np.int64
    assert np.array_equal(ids[2:], product.caption(model, films[2:]))
    assert np.array_equal(ids, product.caption(model, films))
    for row in ids:  # <pad> after the first <eos>
        ends = np.flatnonzero(row == Vocabulary.eos_id)
        if len(ends):
            assert (row[ends[0] + 1:] == Vocabulary.pad_id).all()
    # Word by word it writes what the teacher-forced decoder reads as each next word (before <eos>).
    net = model["medrat"]
    with torch.no_grad():
        locals_, global_ = net.encode_images(medrat.to_model_images(films, net, next(net.parameters())))
        written = torch.from_numpy(ids)
        inputs = torch.cat([torch.full((3, 1), Vocabulary.bos_id), written[:, :-1]], dim=1)
        read = net.decode(inputs, global_, locals_).argmax(dim=-1)
    live = torch.cumsum((inputs == Vocabulary.eos_id).long(), dim=1) == 0
    assert torch.equal(read[live], written[live])
    with pytest.raises(ValueError, match="uint8"):
        product.caption(model, films.astype(np.float32))


class _TableDecoder:
    """Stands in for `MedRAT._next_word_logits`: random word logits drawn from a generator seeded by (film,
    prefix), the film read from the memory and the prefix kept in `past`, which the search must reorder
    with its beams. So every sequence's score is known and depends on all of its earlier words."""

    vocab = 6

    def __call__(self, word, position, memory, past):
        past[0] = word[:, None] if past[0] is None else torch.cat([past[0], word[:, None]], dim=1)
        return torch.stack([self.logits(int(film), tuple(prefix)) for film, prefix in
                            zip(memory[:, 0, 0].tolist(), past[0].tolist())])

    def logits(self, film: int, prefix: tuple[int, ...]) -> torch.Tensor:
        seed = hash((film, prefix)) % 2 ** 31
        return 3.0 * torch.randn(self.vocab, generator=torch.Generator().manual_seed(seed))

    def score(self, film: int, sequence: tuple[int, ...]) -> float:
        """Summed log-probability of the words up to the first <eos>."""
        total, prefix = 0.0, (Vocabulary.bos_id,)
        for word in sequence:
            total += float(torch.log_softmax(self.logits(film, prefix), dim=-1)[word])
            if word == Vocabulary.eos_id:
                break
            prefix += (word,)
        return total


def _canonical(sequence: tuple[int, ...]) -> tuple[int, ...]:
    """<pad> after the first <eos>, as `write` leaves it."""
    if Vocabulary.eos_id not in sequence:
        return sequence
    end = sequence.index(Vocabulary.eos_id) + 1
    return sequence[:end] + (Vocabulary.pad_id,) * (len(sequence) - end)


@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_a_beam_as_wide_as_every_sequence_finds_the_best_one(alpha, monkeypatch):
    length, films = 3, 12
    table = _TableDecoder()
    net = build_networks("medrat", medrat.make_config({**TINY, "vocab_size": table.vocab, "max_words": length + 1}),
                         seed=0)["medrat"]
    monkeypatch.setattr(net, "_next_word_logits", table)
    global_ = torch.arange(films, dtype=torch.float32)[:, None].expand(-1, TINY["d_model"])  # the film's number
    locals_ = torch.zeros(films, 2, TINY["d_model"])
    every = sorted({_canonical(s) for s in itertools.product(range(table.vocab), repeat=length)})
    words = torch.tensor([s.index(Vocabulary.eos_id) + 1 if Vocabulary.eos_id in s else length for s in every])
    greedy = net.write(global_, locals_, beam=1)
    assert torch.equal(net.write(global_, locals_, beam=1, length_penalty=alpha), greedy)
    exact = net.write(global_, locals_, beam=table.vocab ** length, length_penalty=alpha)
    lengths, differs = set(), 0
    for film in range(films):
        scores = torch.tensor([table.score(film, s) for s in every]) / ((5.0 + words) / 6.0) ** alpha
        best = every[int(scores.argmax())]
        assert tuple(exact[film].tolist()) == best
        lengths.add(int(words[int(scores.argmax())]))
        differs += not torch.equal(exact[film], greedy[film])
    assert differs and len(lengths) > 1, "greedy always best or one length only: the test shows nothing"


def test_beam_search_is_a_function_of_each_image_alone(model):
    net = model["medrat"]
    films = (np.random.default_rng(2).random((3, 32, 32)) * 255).astype(np.uint8)
    with torch.no_grad():
        locals_, global_ = net.encode_images(medrat.to_model_images(films, net, next(net.parameters())))
        together = net.write(global_, locals_, beam=3, length_penalty=1.0)
        alone = net.write(global_[1:2], locals_[1:2], beam=3, length_penalty=1.0)
    assert torch.equal(together[1:2], alone)


@pytest.mark.parametrize("bad", [{"patch_grid": 32}, {"d_model": 15}, {"memory_top_k": 9}, {"memory_top_k": 0},
                                 {"memory_size": -1}, {"local_dropout": 1.0},
                                 {"temperature": 0}, {"lr": {"G": 1e-3}}, {"colour": 1},
                                 {"report_beam": 0}, {"length_penalty": -1.0}])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        medrat.make_config({**TINY, **bad})


def test_no_memory_ablation_passes_features_through():
    model = build_networks("medrat", medrat.make_config({**TINY, "memory_size": 0, "memory_top_k": 0}), seed=0)
    features = torch.randn(2, 3, TINY["d_model"])
    assert isinstance(model[medrat.NET_NAME].memory, torch.nn.Identity)
    assert torch.equal(model[medrat.NET_NAME].memory(features), features)


def test_untrained_bundle_round_trips_and_captions(tmp_path):
    init_bundle(str(tmp_path / "b"), "medrat", size=32, seed=0, width=4)
    bundle = load_bundle(str(tmp_path / "b"))
    assert bundle.model_config["cnn_width"] == 4 and bundle.label_names == list(CXR_LABELS)
    again = build_networks("medrat", bundle.model_config, seed=0)
    for a, b in zip(bundle.nets["medrat"].state_dict().values(), again["medrat"].state_dict().values()):
        assert torch.equal(a, b)
    product = spec("medrat").product(Captioning)
    reports = product.decode_reports(product.caption(bundle.nets, np.zeros((1, 32, 32), np.uint8)), bundle.vocabulary)
    assert len(reports) == 1 and isinstance(reports[0], str)
