"""The video store: atomic appearance, no overwrite, sidecar and manifest, posters, the training record."""

import hashlib
import io
import json
import logging
import os

import av
import numpy as np
from PIL import Image

from eval_recorder import poster as poster_module
from eval_recorder import video_store
from eval_recorder.poster import JPEG_QUALITY, last_frame_jpeg
from eval_recorder.tags import TrainingTag
from eval_recorder.training_record import TRAINING, read_training, train_returns
from eval_recorder.video_index import MANIFEST, read_manifest
from eval_recorder.video_store import VideoStore
from helpers import episode
from support.filesystems import fill, small_tmpfs
from support.videos import encode, rgb_frames, tiny_mp4


def store_one(store, **kw):
    args = dict(episode=episode(), stem="flatland-it000001-ev0001-ep000-run1", tag=TrainingTag(1, 400),
                evaluation_round=1, episode_index=0, checkpoint=None)
    args.update(kw)
    return store.store(**args)


def test_store_writes_video_sidecar_and_manifest_line(tmp_path):
    ep = episode()
    path, metadata = store_one(VideoStore(tmp_path, run_id="run1"), episode=ep)
    assert path == tmp_path / "flatland-it000001-ev0001-ep000-run1.mp4"
    assert path.read_bytes() == ep.mp4
    assert metadata["sha256"] == hashlib.sha256(ep.mp4).hexdigest()
    assert metadata["file"] == path.name and metadata["bytes"] == len(ep.mp4)
    assert json.loads(path.with_suffix(".json").read_text()) == metadata
    assert read_manifest(tmp_path) == [metadata]
    assert sorted(os.listdir(tmp_path)) == [
        "flatland-it000001-ev0001-ep000-run1.json", "flatland-it000001-ev0001-ep000-run1.mp4", MANIFEST,
    ]


def test_a_taken_name_is_never_overwritten(tmp_path):
    taken = tmp_path / "flatland-it000001-ev0001-ep000-run1.mp4"
    taken.write_bytes(b"someone else's video")
    lone_sidecar = tmp_path / "flatland-it000001-ev0001-ep000-run1-2.json"
    lone_sidecar.write_text("{}")
    path, metadata = store_one(VideoStore(tmp_path, run_id="run1"))
    assert taken.read_bytes() == b"someone else's video"
    assert lone_sidecar.read_text() == "{}"
    assert path.name == "flatland-it000001-ev0001-ep000-run1-3.mp4"
    assert metadata["file"] == path.name


def test_storing_twice_gives_two_files(tmp_path):
    store = VideoStore(tmp_path, run_id="run1")
    first, _ = store_one(store, episode=episode(mp4=b"first"))
    second, _ = store_one(store, episode=episode(mp4=b"second"))
    assert (first.name, second.name) == ("flatland-it000001-ev0001-ep000-run1.mp4",
                                         "flatland-it000001-ev0001-ep000-run1-2.mp4")
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")
    assert [r["file"] for r in read_manifest(tmp_path)] == [first.name, second.name]


def test_manifest_is_appended_to_never_rewritten(tmp_path):
    earlier = b'{"file": "old.mp4"}\n'
    (tmp_path / MANIFEST).write_bytes(earlier)
    store_one(VideoStore(tmp_path, run_id="run1"))
    content = (tmp_path / MANIFEST).read_bytes()
    assert content.startswith(earlier)
    assert [r["file"] for r in read_manifest(tmp_path)] == ["old.mp4", "flatland-it000001-ev0001-ep000-run1.mp4"]


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path):
    (tmp_path / MANIFEST).write_text('{"file": "a.mp4"}\n{"file": "b.m')
    assert read_manifest(tmp_path) == [{"file": "a.mp4"}]


def test_a_torn_last_line_never_swallows_the_next_record(tmp_path):
    torn = b'{"file": "a.mp4"}\n{"file": "b.m'
    (tmp_path / MANIFEST).write_bytes(torn)
    _, metadata = store_one(VideoStore(tmp_path, run_id="run1"))
    assert (tmp_path / MANIFEST).read_bytes() == torn + b"\n" + json.dumps(metadata, separators=(",", ":")).encode() + b"\n"
    assert read_manifest(tmp_path) == [{"file": "a.mp4"}, metadata]


def test_lines_that_are_not_records_are_skipped(tmp_path):
    (tmp_path / MANIFEST).write_bytes(b'{"file": "a.mp4"}\n\n[1, 2]\n7\n{"file": "\xc3\n{"file": "c.mp4"}\n')
    assert read_manifest(tmp_path) == [{"file": "a.mp4"}, {"file": "c.mp4"}]


# --- posters ---------------------------------------------------------------------------------------


def jpeg_pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_a_stored_video_gets_its_decoded_last_frame_as_its_poster(tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    folder = tmp_path / "videos"
    folder.mkdir()
    store = VideoStore(folder, run_id="run1")
    stems = ["flatland-it000001-ev0001-ep000-run1", "flatland-it000002-ev0002-ep000-run1"]
    for stem, (frames, width, height) in zip(stems, [(6, 64, 48), (5, 96, 64)]):
        mp4 = encode(sources / f"{stem}.mp4", frames=frames, width=width, height=height)
        path, metadata = store_one(store, stem=stem, episode=episode(mp4=mp4, frames=frames, width=width,
                                                                     height=height))
        poster = folder / f"{stem}.jpg"
        assert metadata["poster"] == poster.name
        assert json.loads(path.with_suffix(".json").read_text()) == metadata == read_manifest(folder)[-1]
        decoded = rgb_frames(path)
        assert len(decoded) == frames
        picture, last, first = jpeg_pixels(poster), decoded[-1].astype(np.int16), decoded[0].astype(np.int16)
        assert picture.shape == (height, width, 3)
        to_last, to_first = np.abs(picture - last).mean(), np.abs(picture - first).mean()
        assert to_last < 3, to_last  # the last frame, within what JPEG loses
        assert to_first > 10 and to_first > 5 * to_last, (to_first, to_last)  # not the first: the bar moved
        assert poster.stat().st_mode & 0o777 == 0o644
    assert sorted(os.listdir(folder)) == sorted(
        [f"{stem}{suffix}" for stem in stems for suffix in (".json", ".jpg", ".mp4")] + [MANIFEST])


def jpeg_of_last_frame_decoded_from_the_start(mp4: bytes) -> bytes:
    with av.open(io.BytesIO(mp4)) as container:
        *_, last = container.decode(video=0)
    out = io.BytesIO()
    last.to_image().save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def test_a_poster_is_decoded_from_a_keyframe_near_the_end_and_is_the_last_frame_decoded_from_the_start(
        tmp_path, monkeypatch):
    mp4 = encode(tmp_path / "clip.mp4", frames=300, width=64, height=48)
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        keys = [round(packet.pts * stream.time_base * 10) for packet in container.demux(stream) if packet.is_keyframe]
    assert keys[0] == 0 and 0 < keys[-1] < 299  # more than one keyframe, the last before the last frame
    counts = []
    real = poster_module._last_decoded

    def counted(container, stream):
        last, count = real(container, stream)
        counts.append(count)
        return last, count

    monkeypatch.setattr(poster_module, "_last_decoded", counted)
    expected = jpeg_of_last_frame_decoded_from_the_start(mp4)
    assert last_frame_jpeg(mp4) == expected and last_frame_jpeg(tmp_path / "clip.mp4") == expected
    assert counts[0] == counts[1] and 300 - counts[0] in keys[1:]  # from a keyframe after the first, not from the start
    short = encode(tmp_path / "short.mp4", frames=3, width=64, height=48)  # one keyframe
    assert last_frame_jpeg(short) == jpeg_of_last_frame_decoded_from_the_start(short) and counts[2:] == [3]


def test_a_video_that_does_not_decode_is_stored_without_a_poster_and_said_once(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="eval_recorder.video_store")
    store = VideoStore(tmp_path, run_id="run1")
    first, metadata = store_one(store)
    second, _ = store_one(store, episode=episode(mp4=b"not a video either"))
    assert "poster" not in metadata and json.loads(first.with_suffix(".json").read_text()) == metadata
    assert [(r.levelname, r.getMessage().split(" (")[0]) for r in caplog.records] == [
        ("WARNING", f"no poster for {first.name}"), ("DEBUG", f"no poster for {second.name}"),
    ]
    assert caplog.records[0].getMessage().endswith("); the gallery shows its box without one")
    assert not [name for name in os.listdir(tmp_path) if name.endswith((".jpg", ".tmp"))]


def test_a_taken_poster_name_is_kept_and_moves_the_video_on(tmp_path):
    stem = "flatland-it000001-ev0001-ep000-run1"
    (tmp_path / f"{stem}.jpg").write_bytes(b"someone's picture")
    path, metadata = store_one(VideoStore(tmp_path, run_id="run1"), episode=episode(mp4=tiny_mp4(frames=3)))
    assert path.name == f"{stem}-2.mp4" and metadata["poster"] == f"{stem}-2.jpg"
    assert (tmp_path / f"{stem}.jpg").read_bytes() == b"someone's picture"


def test_a_poster_that_would_take_the_index_room_is_left_out_quietly(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="eval_recorder.video_store")
    with small_tmpfs(tmp_path / "disk", 1 << 20) as disk:
        folder = disk / "videos"
        folder.mkdir()
        mp4 = encode(tmp_path / "clip.mp4", frames=4, width=256, height=256)
        poster = last_frame_jpeg(mp4)
        # Room for the video and 4 pages: its index fits, not its poster as well (can_store keeps a margin).
        fill(disk, leave_bytes=(-(-len(mp4) // 4096) + 4) * 4096)
        path, metadata = store_one(VideoStore(folder, run_id="run1"), episode=episode(mp4=mp4))
        assert path.read_bytes() == mp4 and read_manifest(folder) == [metadata] and "poster" not in metadata
        assert sorted(os.listdir(folder)) == [path.with_suffix(".json").name, path.name, MANIFEST]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [(
        "INFO", f"no poster for {path.name} (OSError: [Errno 28] no room for {len(poster)} bytes beside what the "
                "video's index needs); the gallery shows its box without one",
    )]


def test_reconcile_gives_posters_to_this_runs_indexed_videos_without_one(tmp_path, monkeypatch):
    mp4 = tiny_mp4(frames=4)
    store = VideoStore(tmp_path, run_id="run1")
    stored = [store_one(store, stem=f"flatland-it00000{i}-ev000{i}-ep000-run1", episode=episode(mp4=mp4))[0]
              for i in (1, 2, 3)]
    for path in stored:
        path.with_suffix(".jpg").unlink()  # an older folder, or a crash right after the video
    theirs = tmp_path / "flatland-it000001-ev0001-ep000-run2.mp4"
    theirs.write_bytes(mp4)  # another run's: not ours to touch
    unindexed = tmp_path / "flatland-it000009-ev0009-ep000-run1.mp4"
    unindexed.write_bytes(b"does not decode")  # left unindexed by reconcile_index: no poster tried

    monkeypatch.setattr(video_store, "RECONCILE_POSTER_SECONDS", 0.0)
    store.reconcile()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".jpg")]

    monkeypatch.setattr(video_store, "RECONCILE_POSTER_SECONDS", 60.0)
    before = read_manifest(tmp_path)
    assert VideoStore(tmp_path, run_id="run1").reconcile() == []
    assert sorted(name for name in os.listdir(tmp_path) if name.endswith(".jpg")) == [
        path.with_suffix(".jpg").name for path in stored]
    assert read_manifest(tmp_path) == before  # the index is appended to only for videos, never rewritten
    assert all(jpeg_pixels(path.with_suffix(".jpg")).shape == (24, 32, 3) for path in stored)


# --- the training record ---------------------------------------------------------------------------


def test_record_training_appends_one_line_per_train_call_and_the_gallery_reads_the_last_per_iteration(tmp_path):
    store = VideoStore(tmp_path, run_id="run1")
    assert store.record_training(1, env_steps=400, return_mean=-20.5)
    assert store.record_training(2, env_steps=800, return_mean=float("nan"))  # no episode ended yet
    assert store.record_training(2, env_steps=800, return_mean=-12)  # a resumed run trains iteration 2 again
    assert (tmp_path / TRAINING).read_text().splitlines() == [
        '{"training_iteration":1,"env_steps":400,"episode_return_mean":-20.5,"run_id":"run1"}',
        '{"training_iteration":2,"env_steps":800,"episode_return_mean":null,"run_id":"run1"}',
        '{"training_iteration":2,"env_steps":800,"episode_return_mean":-12.0,"run_id":"run1"}',
    ]
    with (tmp_path / TRAINING).open("a") as record:
        record.write('{"training_iteration": 3, "episode_return_mean": true}\n["x"]\n'
                     '{"training_iteration": 4, "episode_return_mean": 1.0, "run_id": "run2"}\n{"training_it')
    assert train_returns(read_training(tmp_path)) == [(1, -20.5), (2, -12.0), (4, 1.0)]
    assert train_returns(read_training(tmp_path), run_ids={"run1"}) == [(1, -20.5), (2, -12.0)]
    assert read_manifest(tmp_path) == []  # listed nowhere in the manifest


def test_the_training_record_is_never_read_or_written_through_a_symlink(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="eval_recorder.video_store")
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text('{"training_iteration": 1, "episode_return_mean": 1.0}\n')
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / TRAINING).symlink_to(elsewhere)
    assert read_training(folder) == []
    assert not VideoStore(folder, run_id="run1").record_training(2, env_steps=1, return_mean=2.0)
    assert elsewhere.read_text() == '{"training_iteration": 1, "episode_return_mean": 1.0}\n'
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert caplog.records[0].getMessage().startswith(f"could not record the training return of iteration 2 in "
                                                     f"{folder / TRAINING} ([Errno 40] ")
    assert read_training(tmp_path / "nowhere") == []
