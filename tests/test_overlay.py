"""The burned-in label."""

from types import SimpleNamespace

import numpy as np

from eval_recorder.flatland.envs import make_env, set_label_iteration
from eval_recorder.tags import WeightsHistory
from eval_recorder.overlay import burn_label, label_text, strip_height

SMALL = {"n_agents": 2, "x_dim": 30, "y_dim": 30, "n_cities": 2, "max_rail_pairs_in_city": 2,
         "max_rails_between_cities": 2, "malfunction_interval": 0, "seed": 3}


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


def test_an_eval_runner_labels_with_the_iteration_of_the_weights_it_holds():
    env = make_env({**SMALL, "render": "human"})
    runner = SimpleNamespace(env=SimpleNamespace(unwrapped=SimpleNamespace(envs=[env])), _weights_seq_no=4)
    history = WeightsHistory()
    history.record(weights_seq_no=3, training_iteration=3, env_steps=600)
    set_label_iteration(runner, history)  # version 4: the iteration just trained
    assert env.label_iteration == 4
    runner._weights_seq_no = 3  # parallel evaluation: the previous iteration's weights
    set_label_iteration(runner, history)
    assert env.label_iteration == 3
    env.reset(seed=1)
    assert env._label() == "iteration 3 | step 0 | arrived 0/2"


def test_recorded_frames_carry_the_label_and_overlay_off_leaves_them_as_rendered():
    from eval_recorder.overlay import burn_label_yuv420p
    from eval_recorder.recorder import EpisodeRecorder
    from eval_recorder.flatland.rendering import FrameRenderer

    env = make_env(SMALL)
    env.reset(seed=5)
    rail_env = env.wrap()
    plain = FrameRenderer(rail_env).render_yuv420p().copy()
    off = EpisodeRecorder(rail_env, fps=10, max_side=800, runner_index=0)._frame()
    text = "iteration 1 | step 0 | arrived 0/2"
    on = EpisodeRecorder(rail_env, fps=10, max_side=800, runner_index=0, label=lambda: text)._frame()
    height = plain.shape[0] * 2 // 3
    strip = strip_height(height)
    assert np.array_equal(off, plain)  # overlay off: pixel-identical to the renderer's frame
    assert np.array_equal(on, burn_label_yuv420p(plain, text))
    assert np.array_equal(on[: height - strip], plain[: height - strip])  # luma above the strip untouched
    assert not np.array_equal(on[height - strip : height], plain[height - strip : height])
