"""bench train justify's scores on hand-made arrays: M's success and closeness, the random real image
of the alternative diagnosis, the pixel distance and the diagnosis-only captioner."""

from __future__ import annotations

import numpy as np

from factory.bench import train_justify as bench


def test_pixel_distance_is_the_mean_squared_difference_on_the_unit_scale():
    a = np.zeros((2, 2, 2), np.uint8)
    b = np.array([[[255, 0], [0, 0]], [[255, 255], [255, 255]]], np.uint8)
    assert np.allclose(bench.pixel_distance(a, b), [0.25, 1.0])


def test_closeness_counts_the_inputs_whose_counterfactual_is_nearer_than_the_real_reference():
    inputs = np.full((4, 2, 2), 100, np.uint8)
    counterfactuals = np.full((4, 2, 2), 110, np.uint8)
    references = np.stack([np.full((2, 2), v, np.uint8) for v in (200, 100, 50, 111)])
    found = bench.closeness(inputs, counterfactuals, references)
    assert found["closer"].tolist() == [True, False, True, True] and found["closer_share"] == 0.75
    assert np.allclose(found["counterfactual_mse"], (10 / 255) ** 2)
    assert np.allclose(found["reference_mse"], [(100 / 255) ** 2, 0, (50 / 255) ** 2, (11 / 255) ** 2])


def test_success_is_the_share_read_as_the_alternative_diagnosis():
    assert bench.success_rate(np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0])) == 0.5


def test_the_reference_is_a_seeded_pool_image_of_the_target_diagnosis_never_the_input_itself():
    pool = np.array([0, 1, 1, 0, 1, 2])
    targets = np.array([1, 1, 0, 3, 2])
    exclude = np.array([1, 0, 3, 2, 5])  # input 4's only diagnosis-2 image is itself
    chosen = bench.random_of_diagnosis(targets, pool, exclude, seed=0)
    assert chosen[0] in (2, 4) and chosen[1] in (1, 2, 4) and chosen[2] == 0
    assert chosen[3] == -1 and chosen[4] == -1
    assert np.array_equal(chosen, bench.random_of_diagnosis(targets, pool, exclude, seed=0))
    picks = {int(bench.random_of_diagnosis(targets, pool, exclude, seed=s)[1]) for s in range(20)}
    assert picks == {1, 2, 4}  # every image of the diagnosis can be drawn


def test_the_diagnosis_only_captioner_takes_the_most_common_caption():
    assert bench.most_common(["a b", "c d", "c d", "a b", "c d"]) == "c d"
    assert bench.most_common(["x", "y"]) == "x"  # ties: the first seen


def test_the_figure_keeps_every_header_and_title_inside_it():
    from types import SimpleNamespace

    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)

    def images():
        return rng.integers(0, 256, (6, 16, 16), dtype=np.uint8)

    diagnoses = np.array([0, 1] * 3)
    held = SimpleNamespace(small=images(), diagnoses=diagnoses)
    found = {"target": 1 - diagnoses, "diagnosis": diagnoses, "low": images()}
    fig = bench.draw_figure(held, found, images(), images(), diagnoses, ["No Finding", "Cardiomegaly"])
    try:
        renderer = fig.canvas.get_renderer()
        fig.draw(renderer)
        texts = [t for ax in fig.axes for t in [ax.title, *ax.texts] if t.get_text()]
        assert [t.get_text() for t in fig.axes[0].texts] == ["input"] and len(texts) == 6 * 4 + 4
        for text in texts:
            box = text.get_window_extent(renderer)
            assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1, \
                text.get_text()
    finally:
        plt.close(fig)


def test_a_stage_plans_with_the_ratio_of_the_latest_earlier_stage_of_its_own_kind():
    assert bench.worker_overhead("arae", {}) == bench.OVERHEAD_PRIOR["text"]
    # the ARAE's LSTM steps' ratio does not carry over to the image stages
    assert bench.worker_overhead("stage1", {"arae": 1.62}) == bench.OVERHEAD_PRIOR["image"]
    assert bench.worker_overhead("inverse", {"arae": 1.62, "stage1": 0.97}) == 0.97
    assert bench.worker_overhead("inverse", {"arae": 1.62, "stage1": 0.97, "stage2": 1.1}) == 1.1


def test_planned_steps_are_the_budget_less_start_up_over_the_margined_step_cpu_of_all_workers():
    # (300 - 60) / (2 workers * 0.4 s * 1.5 * 1.1) = 181.8
    assert bench.plan_steps(300.0, 60.0, 2, 0.4, 1.5, margin=0.1) == 181
    assert bench.plan_steps(300.0, 60.0, 2, 0.4, 1.0, margin=0.0) == 300
    assert bench.plan_steps(50.0, 60.0, 2, 0.4, 1.0) == 0  # the start-up alone exceeds the budget
