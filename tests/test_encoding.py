"""The streaming encoder writes real H.264 mp4 files that decode back."""

import av
import numpy as np
import pytest

from eval_recorder.encoding import StreamingEncoder, even_size


def frames(n, width=64, height=48):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    return [np.roll(base, shift=i * 2, axis=1) for i in range(n)]


def test_frames_round_trip_as_h264_yuv420p(tmp_path):
    path = tmp_path / "clip.mp4"
    encoder = StreamingEncoder(path, width=64, height=48, fps=12)
    for frame in frames(30):
        encoder.add(frame)
    assert encoder.close() == 30
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert stream.average_rate == 12
    assert len(decoded) == 30
    assert decoded[0].shape == (48, 64, 3)


def test_odd_sizes_are_refused_and_even_size_rounds_down():
    assert even_size(485, 300) == (484, 300)
    with pytest.raises(ValueError, match="even frame sides, got 485x300"):
        StreamingEncoder("unused.mp4", width=485, height=300, fps=10)


def test_a_wrong_frame_is_refused(tmp_path):
    encoder = StreamingEncoder(tmp_path / "clip.mp4", width=64, height=48, fps=10)
    with pytest.raises(ValueError, match=r"frame must be uint8 of shape \(48, 64, 3\), got uint8 \(48, 64, 4\)"):
        encoder.add(np.zeros((48, 64, 4), dtype=np.uint8))
    encoder.abort()
