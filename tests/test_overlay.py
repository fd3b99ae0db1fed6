"""The burned-in label."""

import numpy as np
import pytest

from eval_recorder.overlay import burn_label, burn_label_in_place, burn_label_yuv420p, label_text, strip_height


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


def drawn_whole(width: int, height: int, text: str) -> np.ndarray:
    """The strip as PIL draws it in one go: white text, anchored left-middle, on dark grey."""
    from PIL import Image, ImageDraw, ImageFont

    strip = strip_height(height)
    band = Image.new("RGB", (width, strip), (20, 20, 20))
    font = ImageFont.load_default(size=max(10, strip - 4))
    ImageDraw.Draw(band).text((4, strip // 2), text, fill=(255, 255, 255), font=font, anchor="lm")
    return np.asarray(band)


def label_sequence():
    """Texts as a recorder burns them one frame after another, then odd ones (kerning pairs,
    text wider than the frame, non-ASCII drawn whole, empty), then labels again."""
    texts = [label_text(training_iteration=7, step=step, extra=f"arrived {step // 40}/3") for step in range(0, 130, 3)]
    texts += [label_text(training_iteration=12, step=step, extra=f"return {step * -0.25:.2f}") for step in (8, 9, 10, 99, 100)]
    texts += ["AVAWAT To Ty ff fi", "x" * 300, "iteration 3 | step 7 | arrivé 1/2", "日本 step 3", "", " ", "|/?"]
    texts += [label_text(training_iteration=None, step=step) for step in (0, 1, 1000)]
    return texts


@pytest.mark.parametrize("size", [(484, 484), (800, 800), (64, 48), (1000, 120)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_the_kept_strip_is_byte_identical_to_drawing_the_label_whole(size):
    from eval_recorder.yuv import paste_rows_yuv420p, rgb_to_yuv420p

    width, height = size
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    yuv = rgb_to_yuv420p(frame)
    top = height - strip_height(height)
    for text in label_sequence():
        band = drawn_whole(width, height, text)
        expected = frame.copy()
        expected[top:] = band
        assert np.array_equal(burn_label(frame, text), expected), text
        expected_yuv = yuv.copy()
        paste_rows_yuv420p(expected_yuv, top, band)
        assert np.array_equal(burn_label_yuv420p(yuv, text), expected_yuv), text
        in_place = yuv.copy()
        burn_label_in_place(in_place, text, pixel_format="yuv420p")
        assert np.array_equal(in_place, expected_yuv), text


def test_burn_label_in_place_writes_only_the_strip_rows():
    frame = np.full((100, 60, 3), 7, dtype=np.uint8)
    burn_label_in_place(frame, "step 1")
    assert (frame[: 100 - strip_height(100)] == 7).all()
    with pytest.raises(ValueError, match="pixel_format must be 'rgb24' or 'yuv420p', got 'rgba'"):
        burn_label_in_place(frame, "step 1", pixel_format="rgba")
