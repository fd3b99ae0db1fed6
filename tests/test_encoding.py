"""The streaming encoder writes real H.264 mp4 files that decode back; one helper process
serves every encoder of a process, and a failure reaches the encoder it belongs to."""

import os
import signal
import subprocess
import sys

import av
import numpy as np
import pytest

from eval_recorder import encoder_process
from eval_recorder.encoding import StreamingEncoder, encoder_process_ids, start_encoder_process
from eval_recorder.errors import EncoderFailed
from eval_recorder.overlay import burn_label, burn_label_yuv420p
from eval_recorder.yuv import even_size


def frames(n, width=64, height=48, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    return [np.roll(base, shift=i * 2, axis=1) for i in range(n)]


def scene(n, size):
    """Frames a generic env might render: a gradient, a grid, a few moving discs."""
    ramp = np.linspace(40, 200, size, dtype=np.float32)
    background = np.stack([ramp[:, None] + 0 * ramp, 0 * ramp[:, None] + ramp, 120 + 0 * ramp[:, None] * ramp], axis=2)
    background = background.astype(np.uint8)
    background[::40] = background[:, ::40] = 90
    yy, xx = np.ogrid[:size, :size]
    result = []
    for i in range(n):
        frame = background.copy()
        for k, color in enumerate([(220, 40, 40), (30, 30, 200), (250, 220, 30)]):
            cx, cy = (100 + 13 * i + 150 * k) % size, (200 + 7 * i * (k + 1)) % size
            frame[(yy - cy) ** 2 + (xx - cx) ** 2 <= (20 + 5 * k) ** 2] = color
        result.append(frame)
    return result


def decode(path, pixel_format="rgb24"):
    with av.open(str(path)) as container:
        return [f.to_ndarray(format=pixel_format) for f in container.decode(video=0)]


def psnr(a, b):
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


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
    with pytest.raises(ValueError, match=r"yuv420p frame must be uint8 of shape \(72, 64\), got int64 \(72, 64\)"):
        encoder.add_yuv420p(np.zeros((72, 64), dtype=np.int64))
    encoder.abort()


def test_one_helper_process_serves_four_encoders_at_once(tmp_path):
    """Four envs of one runner record at the same time: four complete mp4s, one helper process."""
    sizes = [(64, 48), (96, 64), (64, 48), (128, 96)]
    counts = [30, 25, 41, 12]
    encoders = [StreamingEncoder(tmp_path / f"env{i}.mp4", width=w, height=h, fps=10) for i, (w, h) in enumerate(sizes)]
    helpers = set(encoder_process_ids())
    assert len(helpers) == 1
    clips = [frames(count, w, h, seed=i) for i, ((w, h), count) in enumerate(zip(sizes, counts))]
    for step in range(max(counts)):  # interleaved, as a vector env steps
        for index, (encoder, clip) in enumerate(zip(encoders, clips)):
            if step < len(clip):
                if index % 2:
                    encoder.add(clip[step], label=f"env {index} | step {step}")
                else:
                    from eval_recorder.yuv import rgb_to_yuv420p

                    encoder.add_yuv420p(rgb_to_yuv420p(clip[step]))
    assert [encoder.close() for encoder in encoders] == counts
    assert set(encoder_process_ids()) == helpers
    for i, ((width, height), count) in enumerate(zip(sizes, counts)):
        decoded = decode(tmp_path / f"env{i}.mp4")
        assert len(decoded) == count and decoded[0].shape == (height, width, 3)
    later = StreamingEncoder(tmp_path / "later.mp4", width=64, height=48, fps=10)  # the next episode: same helper
    assert set(encoder_process_ids()) == helpers == {start_encoder_process()}
    later.add(frames(1)[0])
    assert later.close() == 1


def test_label_is_burned_into_the_frame_the_encoder_gets(tmp_path):
    """add(frame, label=) encodes exactly what add(burn_label(frame)) encodes: same mp4 bytes."""
    clip = scene(12, 160)
    paths = {}
    for how in ("burned before", "burned on the way", "yuv burned before", "yuv burned on the way"):
        path = paths[how] = tmp_path / f"{how}.mp4"
        encoder = StreamingEncoder(path, width=160, height=160, fps=10)
        for step, frame in enumerate(clip):
            text = f"iteration 3 | step {step} | return {step * 0.5:.1f}"
            if how == "burned before":
                encoder.add(burn_label(frame, text))
            elif how == "burned on the way":
                encoder.add(frame, label=text)
            else:
                from eval_recorder.yuv import rgb_to_yuv420p

                yuv = rgb_to_yuv420p(frame)
                if how == "yuv burned before":
                    encoder.add_yuv420p(burn_label_yuv420p(yuv, text))
                else:
                    encoder.add_yuv420p(yuv, label=text)
        assert encoder.close() == 12
    assert paths["burned before"].read_bytes() == paths["burned on the way"].read_bytes()
    assert paths["yuv burned before"].read_bytes() == paths["yuv burned on the way"].read_bytes()


def test_800x800_rgb_frames_decode_within_40_db_of_what_the_encoder_was_given(tmp_path):
    clip = scene(20, 800)
    path = tmp_path / "large.mp4"
    encoder = StreamingEncoder(path, width=800, height=800, fps=10)
    given = []
    for step, frame in enumerate(clip):
        encoder.add(frame, label=f"iteration 1 | step {step}")
        labelled = burn_label(frame, f"iteration 1 | step {step}")
        given.append(av.VideoFrame.from_ndarray(labelled, format="rgb24").reformat(format="yuv420p").to_ndarray())
    assert encoder.close() == 20
    decoded = decode(path, "yuv420p")
    assert len(decoded) == 20
    assert min(psnr(d, g) for d, g in zip(decoded, given)) >= 40.0


def test_a_failing_encoder_reports_its_own_failure_and_the_others_go_on(tmp_path):
    good = [StreamingEncoder(tmp_path / f"good{i}.mp4", width=64, height=48, fps=10) for i in range(2)]
    bad = StreamingEncoder(tmp_path / "missing" / "bad.mp4", width=64, height=48, fps=10)
    failure = None
    for frame in frames(20):
        for encoder in good:
            encoder.add(frame)
        if failure is None:  # the failure arrives with a reply: raised by a later add, or by close
            try:
                bad.add(frame)
            except RuntimeError as error:
                failure = str(error)
    if failure is None:
        with pytest.raises(RuntimeError) as raised:
            bad.close()
        failure = str(raised.value)
    assert failure.startswith("encoding bad.mp4 failed: ") and "No such file or directory" in failure
    bad.abort()
    assert [encoder.close() for encoder in good] == [20, 20]
    assert [len(decode(tmp_path / f"good{i}.mp4")) for i in range(2)] == [20, 20]


def test_a_dead_helper_fails_every_open_encoder_and_the_next_encoder_gets_a_new_one(tmp_path):
    encoders = [StreamingEncoder(tmp_path / f"clip{i}.mp4", width=64, height=48, fps=10) for i in range(2)]
    for encoder in encoders:
        encoder.add(frames(1)[0])
    (helper,) = encoder_process_ids()
    os.kill(helper, signal.SIGKILL)
    for index, encoder in enumerate(encoders):
        with pytest.raises(EncoderFailed, match=rf"^encoding clip{index}\.mp4 failed: the encoder helper process "
                                                rf"\(pid {helper}\) was killed by SIGKILL$"):
            for frame in frames(10):
                encoder.add(frame)
            encoder.close()
        encoder.abort()  # after a failure: nothing to wait for
    fresh = StreamingEncoder(tmp_path / "fresh.mp4", width=64, height=48, fps=10)
    assert encoder_process_ids() != [helper]
    for frame in frames(5):
        fresh.add(frame)
    assert fresh.close() == 5
    assert len(decode(tmp_path / "fresh.mp4")) == 5


def test_abort_drops_the_encoder_and_close_after_it_is_refused(tmp_path):
    encoder = StreamingEncoder(tmp_path / "dropped.mp4", width=64, height=48, fps=10)
    for frame in frames(5):
        encoder.add(frame)
    encoder.abort()
    encoder.abort()  # twice is harmless
    with pytest.raises(RuntimeError, match=r"close\(\) after close\(\) or abort\(\)"):
        encoder.close()
    with pytest.raises(RuntimeError, match=r"frame added after close\(\) or abort\(\)"):
        encoder.add(frames(1)[0])


def test_the_helper_loads_pyav_s_container_and_video_modules_only(tmp_path):
    """The helper is paid for on every eval runner: it maps PyAV's video modules, not its
    filter, device or audio-resampling ones, nor the recording process's modules."""
    encoder = StreamingEncoder(tmp_path / "clip.mp4", width=64, height=48, fps=10)
    encoder.add(frames(1)[0])
    assert encoder.close() == 1  # the helper has encoded a frame and finished the file; it stays for the next
    (helper,) = encoder_process_ids()
    with open(f"/proc/{helper}/maps") as maps:
        paths = {line.split()[-1] for line in maps if "/av/" in line and line.rstrip().endswith(".so")}
    modules = {path.rsplit("/av/", 1)[1].split(".")[0] for path in paths}  # e.g. "video/frame"
    assert {"_core", "container/output", "video/frame", "video/reformatter"} <= modules
    assert [name for name in modules if name.startswith(("filter/", "device", "audio/resampler", "audio/fifo"))] == []
    with open(f"/proc/{helper}/cmdline", "rb") as cmdline:
        assert cmdline.read().split(b"\0")[1:3] == [b"-P", os.fsencode(encoder_process.__file__)]
    assert len(decode(tmp_path / "clip.mp4")) == 1


def test_the_helper_falls_back_to_import_av_for_a_pyav_laid_out_otherwise(tmp_path):
    """A PyAV without the modules the helper imports one by one is imported whole."""
    fake = tmp_path / "av"
    fake.mkdir()
    (fake / "__init__.py").write_text("WHOLE = True\n")
    program = (
        "import sys; sys.path.insert(0, sys.argv[1]); import encoder_process as e; "
        "av = e._import_pyav(); print(av.WHOLE, sorted(m for m in sys.modules if m.startswith('av')))"
    )
    done = subprocess.run(
        [sys.executable, "-P", "-c", program, str(tmp_path)], capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": os.path.dirname(encoder_process.__file__)},
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "True ['av']\n"), done.stderr


@pytest.mark.parametrize("path", ["/tmp/a b/clip.mp4", "/tmp/\udcff-not-utf-8/é.mp4"])
def test_open_message_carries_settings_and_any_path(path):
    settings = dict(id=7, width=800, height=600, fps=10, crf=16, threads=1, slot_bytes=1440000, scene_bytes=0,
                    preset="veryfast", drawing=None)
    settings["path"] = path
    message = encoder_process.pack_open(settings)
    assert message[:1] == b"O"
    assert encoder_process.unpack_open(message) == settings
    drawn = dict(settings, scene_bytes=2345, drawing="eval_recorder.flatland.scene:SceneDrawing")
    assert encoder_process.unpack_open(encoder_process.pack_open(drawn)) == drawn


@pytest.mark.parametrize("width, height", [(800, 800), (524, 524), (640, 482), (320, 210), (802, 208), (64, 48), (2, 2)])
def test_rgb_frames_converted_band_by_band_are_the_bytes_of_the_whole_frame_converted(width, height):
    """The helper converts RGB slots to yuv420p a band of rows at a time (no whole-frame RGB
    copy); with the bands' margins that gives what converting the whole frame gives."""
    rgb = np.random.default_rng(width + height).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    whole = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
    fd = os.memfd_create("slots")
    try:
        data = bytes(5) + rgb.tobytes()  # the frame at an offset, as a slot after the first is
        assert os.write(fd, data) == len(data)
        target = av.VideoFrame(width, height, "yuv420p")
        encoder_process._RgbBands(av, width, height).convert(fd, 5, target)
    finally:
        os.close(fd)
    assert np.array_equal(target.to_ndarray(), whole)


HUGE_PAGES_PROGRAM = """
import sys
from pathlib import Path
import numpy as np
from eval_recorder.encoding import StreamingEncoder, encoder_process_ids

def status(pid):
    with open(f"/proc/{pid}/status") as lines:
        enabled = next(line.split()[1] for line in lines if line.startswith("THP_enabled:"))
    with open(f"/proc/{pid}/smaps_rollup") as lines:
        huge = next(int(line.split()[1]) for line in lines if line.startswith("AnonHugePages:"))
    return enabled, huge, "ctypes" in open(f"/proc/{pid}/maps").read()

rng = np.random.default_rng(0)
for size in (524, 800):
    encoder = StreamingEncoder(Path(sys.argv[1]) / f"{size}.mp4", width=size, height=size, fps=10)
    # The helper reads a frame only after encoding the one before, and an add waits for a free
    # slot: when the fourth add returns, the first frame is encoded and x264 has its buffers.
    for step in range(4):
        encoder.add(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))
    (helper,) = encoder_process_ids()
    print(size, *status(helper))
    encoder.close()
"""


def test_the_helper_turns_huge_pages_off_before_x264_takes_them_for_large_frames(tmp_path):
    """x264 puts buffers of 1.75 MB or more in transparent huge pages, rounded up to 2 MB; from
    640x640 frames on the helper turns them off (and only then loads ctypes to do it)."""
    done = subprocess.run(
        [sys.executable, "-c", HUGE_PAGES_PROGRAM, str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["524 1 0 False", "800 0 0 True"]
    assert [len(decode(tmp_path / f"{size}.mp4")) for size in (524, 800)] == [4, 4]


def test_rows_are_copied_between_planes_of_equal_and_of_different_strides():
    source = av.VideoFrame.from_ndarray(np.arange(8 * 64, dtype=np.uint8).reshape(8, 64) % 251, format="gray")
    for width in (64, 100):  # the same stride as the source's, and a larger one
        target = av.VideoFrame.from_ndarray(np.zeros((8, width), dtype=np.uint8), format="gray")
        encoder_process._copy_rows(source.planes[0], target.planes[0], 2, 3, 4, 64)
        expected = np.zeros((8, width), dtype=np.uint8)
        expected[3:7, :64] = source.to_ndarray()[2:6]
        assert (target.planes[0].line_size == source.planes[0].line_size) == (width == 64)
        assert np.array_equal(target.to_ndarray(), expected)
