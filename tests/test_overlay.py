"""The burned-in label."""

import numpy as np

from eval_recorder.overlay import burn_label, label_text, strip_height


def test_label_text_says_iteration_step_and_arrivals():
    assert label_text(training_iteration=12, step=40, extra="arrived 1/3") == "iteration 12 | step 40 | arrived 1/3"
    assert label_text(training_iteration=None, step=0, extra="arrived 0/2") == "iteration ? | step 0 | arrived 0/2"
    assert label_text(training_iteration=3, step=7) == "iteration 3 | step 7"


def test_label_changes_only_the_strip_at_the_bottom():
    frame = np.random.default_rng(0).integers(0, 255, size=(484, 484, 3), dtype=np.uint8)
    labelled = burn_label(frame, "iteration 3 | step 7 | arrived 1/2")
    strip = strip_height(484)
    assert labelled.shape == frame.shape and labelled.dtype == np.uint8
    assert np.array_equal(labelled[: 484 - strip], frame[: 484 - strip])
    band = labelled[484 - strip :]
    assert (band == 20).mean() > 0.5  # dark strip
    assert (band == 255).any()  # with white text
