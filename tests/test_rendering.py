"""Fast frames keep flatland's picture: every frame of a fixed episode matches RenderTool's,
and the mp4 decodes back close to the frames the encoder was given (issue 5, goal 3)."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from eval_recorder.encoding import StreamingEncoder
from eval_recorder.flatland.frames import FlatlandFrames
from eval_recorder.frames import DEFAULT_MAX_SIDE, frames_rendered
from eval_recorder.recorder import VideoRecorder
from eval_recorder.yuv import paste_rows_yuv420p, rgb_to_yuv420p
from eval_recorder.flatland.rendering import FrameRenderer

STEPS = 40
SEED = 7


def tiny_env(seed: int = SEED):
    """3 trains on 30x30, malfunctioning often (so the malfunction mark is drawn too)."""
    from flatland.env_generation.env_generator import env_generator

    rail_env, _, _ = env_generator(
        n_agents=3, x_dim=30, y_dim=30, seed=seed, malfunction_interval=6, malfunction_duration_min=2,
        malfunction_duration_max=4,
    )  # fmt: skip
    rail_env.reset(random_seed=seed)
    return rail_env


def random_actions(rail_env, steps: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        yield {handle: int(rng.integers(0, 5)) for handle in range(rail_env.get_num_agents())}


def flatland_frame(tool) -> np.ndarray:
    """What RenderTool(env, gl="PILSVG") draws for the env's current state, as RGB."""
    tool.render_env(show=False, show_observations=False, show_predictions=False)
    return tool.get_image()[:, :, :3]


def mean_abs_diff(ours: np.ndarray, reference: np.ndarray) -> float:
    height, width = ours.shape[:2]  # ours is cropped to even sides
    return float(np.abs(ours.astype(np.int16) - reference[:height, :width].astype(np.int16)).mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="module")
def episode():
    """The fixed episode: per state (reset, then every step) our RGB and yuv420p frames and flatland's."""
    from flatland.utils.rendertools import RenderTool

    rail_env = tiny_env()
    tool = RenderTool(rail_env, gl="PILSVG")
    renderer = FrameRenderer(rail_env, max_side=0)
    renderer.new_episode()
    states = [(renderer.render(), renderer.render_yuv420p(), flatland_frame(tool))]
    malfunctions = 0
    for actions in random_actions(rail_env, STEPS, SEED):
        rail_env.step(actions)
        malfunctions += sum(agent.malfunction_handler.malfunction_down_counter > 0 for agent in rail_env.agents)
        states.append((renderer.render(), renderer.render_yuv420p(), flatland_frame(tool)))
    return dict(rail_env=rail_env, tool=tool, renderer=renderer, states=states, malfunctions=malfunctions)


def same_picture(ours: np.ndarray, reference: np.ndarray) -> bool:
    """Pixel for pixel flatland's frame (ours is cropped to even sides)."""
    height, width = ours.shape[:2]
    return np.array_equal(ours, reference[:height, :width])


def test_every_frame_of_an_episode_is_flatland_render_tool_s_pixel_for_pixel(episode):
    ours, _, reference = episode["states"][0]
    assert ours.dtype == np.uint8 and ours.shape == (484, 484, 3)  # flatland's own size at 30x30
    exact = [same_picture(ours, reference) for ours, _, reference in episode["states"]]
    assert len(exact) == STEPS + 1
    assert all(exact), [index for index, same in enumerate(exact) if not same]
    assert episode["malfunctions"] > 0  # the episode did draw malfunctioning trains


def test_frames_match_again_after_a_reset_with_new_rails(episode):
    rail_env, tool, renderer = episode["rail_env"], episode["tool"], episode["renderer"]
    first_rails = rail_env.rail.grid.copy()
    rail_env.reset(random_seed=SEED + 1)
    assert not np.array_equal(rail_env.rail.grid, first_rails)
    renderer.new_episode()
    tool.reset()
    assert same_picture(renderer.render(), flatland_frame(tool))
    for actions in random_actions(rail_env, 10, SEED + 1):
        rail_env.step(actions)
        assert same_picture(renderer.render(), flatland_frame(tool))


def test_yuv420p_frames_are_the_rgb_frames(episode):
    for rgb, yuv, _ in episode["states"]:
        height, width = rgb.shape[:2]
        assert yuv.shape == (height * 3 // 2, width) and yuv.dtype == np.uint8
        assert np.array_equal(yuv, rgb_to_yuv420p(rgb))  # per-cell updates == converting the whole frame
        back = av.VideoFrame.from_ndarray(yuv, format="yuv420p").to_ndarray(format="rgb24")
        assert psnr(back, rgb) >= 30.0  # what 4:2:0 chroma subsampling alone costs, no codec yet


def test_decoded_mp4_is_within_30_db_of_the_frames_given_to_the_encoder(episode, tmp_path):
    states = episode["states"]
    height, width = states[0][0].shape[:2]
    path = tmp_path / "episode.mp4"
    encoder = StreamingEncoder(path, width=width, height=height, fps=10)
    for _, yuv, _ in states:
        encoder.add_yuv420p(yuv)
    assert encoder.close() == len(states)
    with av.open(str(path)) as container:
        decoded = [(f.to_ndarray(format="yuv420p"), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    assert len(decoded) == len(states)
    for (rgb, yuv, _), (decoded_yuv, decoded_rgb) in zip(states, decoded):
        assert psnr(decoded_yuv, yuv) >= 30.0  # the frames as given to the encoder
        assert psnr(decoded_rgb, rgb) >= 30.0  # and as rendered, before 4:2:0


def test_paste_rows_yuv420p_replaces_just_those_rows(episode):
    rgb, yuv, _ = episode["states"][-1]
    strip = np.full((24, rgb.shape[1], 3), (20, 20, 20), dtype=np.uint8)
    labelled = yuv.copy()
    paste_rows_yuv420p(labelled, 460, strip)
    expected = rgb.copy()
    expected[460:] = strip
    assert np.array_equal(labelled, rgb_to_yuv420p(expected))
    with pytest.raises(ValueError, match="do not fit"):
        paste_rows_yuv420p(labelled, 461, strip)


def test_max_side_scales_flatland_frame_down_to_even_sides(episode):
    rail_env, tool = episode["rail_env"], episode["tool"]
    renderer = FrameRenderer(rail_env, max_side=201)
    renderer.new_episode()
    frame, yuv = renderer.render(), renderer.render_yuv420p()
    assert frame.shape == (200, 200, 3)
    assert yuv.shape == (300, 200)
    from PIL import Image

    flatland_image = Image.fromarray(np.ascontiguousarray(flatland_frame(tool)))
    reference = np.asarray(flatland_image.resize((200, 200), Image.BILINEAR))
    assert mean_abs_diff(frame, reference) <= 3.0


def test_default_max_side_keeps_flatland_size_for_ordinary_grids(episode):
    renderer = FrameRenderer(episode["rail_env"])
    renderer.new_episode()
    assert DEFAULT_MAX_SIDE == 800
    assert renderer.render().shape == (484, 484, 3)


def test_frames_rendered_counts_every_frame_the_flatland_source_gives(episode):
    source = FlatlandFrames.find(episode["rail_env"], max_side=0)
    source.new_episode()
    before = frames_rendered()
    source.frame()
    source.frame()
    assert frames_rendered() == before + 2


@pytest.mark.parametrize(
    ("steps", "frame_every", "frames"),
    [(10, 1, 11), (10, 3, 5), (9, 3, 4), (10, 20, 2)],
    ids=["every-step", "every-3rd-plus-last", "last-step-is-due", "only-reset-and-last"],
)
def test_frame_every_records_reset_every_kth_step_and_the_last_step(steps, frame_every, frames):
    rail_env = tiny_env()
    recorder = VideoRecorder(FlatlandFrames.find(rail_env, max_side=0), fps=10, runner_index=0,
                               frame_every=frame_every)
    recorder.start(env_seed=SEED)
    for actions in random_actions(rail_env, steps, SEED):
        rail_env.step(actions)
        recorder.capture()
    video = recorder.finish(env_label="flatland", episode_length=steps, episode_return=0.0)
    assert (video.frames, video.frame_every, video.width, video.height) == (frames, frame_every, 484, 484)
    assert video.mp4 == b""  # drawn beside the env: the helper finishes it while the env would play on
    mp4, drawn = recorder.drawing.result()
    assert drawn == frames
    with av.open(io.BytesIO(mp4)) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(decoded) == frames
    final_state = FrameRenderer(rail_env, max_side=0).render()
    assert psnr(decoded[-1], final_state) >= 30.0  # the video ends on the episode's last step


def test_frame_every_must_be_positive():
    with pytest.raises(ValueError, match="frame_every must be >= 1, got 0"):
        VideoRecorder(FlatlandFrames.find(tiny_env(), max_side=0), fps=10, runner_index=0, frame_every=0)


def test_yuv420p_frames_stay_exact_when_few_converted_boxes_are_kept(monkeypatch):
    """Boxes whose trains did not change reuse their conversion; with room for only two
    (three trains, malfunction marks), every frame is still the whole frame converted."""
    from eval_recorder.flatland import rendering

    monkeypatch.setattr(rendering, "_PATCHES", 2)
    rail_env = tiny_env()
    renderer = FrameRenderer(rail_env, max_side=0)
    renderer.new_episode()
    for actions in random_actions(rail_env, STEPS, SEED):
        rail_env.step(actions)
        assert np.array_equal(renderer.render_yuv420p(), rgb_to_yuv420p(renderer.render()))


def test_sparse_layer_gives_the_dense_layer_s_pixels_anywhere():
    """Layers 2 and 5 are kept as their marked cells only; every box and index pick matches
    the full-frame layer, including cells cut by the frame's edge and pixels between cells."""
    from eval_recorder.flatland.rendering import _CLEAR, _box_indices, _SparseLayer

    rng = np.random.default_rng(3)
    cell, height, width = 13, 70, 83  # 6 x 7 cells, the last row and column cut
    dense = np.empty((height, width, 4), np.uint8)
    dense[...] = _CLEAR
    for row, col in [(0, 0), (2, 3), (2, 4), (5, 6), (5, 0)]:
        y0, x0 = row * cell, col * cell
        pixels = rng.integers(0, 256, (cell, cell, 4), dtype=np.uint8)
        dense[y0 : y0 + cell, x0 : x0 + cell] = pixels[: height - y0, : width - x0]
        dense[y0 + 1, x0 + 2, 3] = 255  # marked for sure, whatever the random alphas are
    layer = _SparseLayer(dense, cell)
    assert len(layer._pieces) == 5
    for _ in range(200):
        x0, x1 = sorted(rng.integers(0, width + 1, 2))
        y0, y1 = sorted(rng.integers(0, height + 1, 2))
        assert np.array_equal(layer.region(x0, y0, x1, y1), dense[y0:y1, x0:x1])
    for box_height, box_width in [(14, 14), (4, 30), (1, 1)]:
        lefts, tops = rng.integers(0, width - box_width + 1, 9), rng.integers(0, height - box_height + 1, 9)
        corners = np.stack([lefts, tops], axis=1)
        rows, cols = _box_indices(corners, box_height, box_width)
        assert np.array_equal(layer.pick(rows, cols), dense[rows, cols])
