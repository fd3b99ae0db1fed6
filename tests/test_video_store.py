"""The video store: atomic appearance, no overwrite, sidecar and manifest."""

import hashlib
import json
import os

from eval_recorder.tags import TrainingTag
from eval_recorder.video_index import MANIFEST, read_manifest
from eval_recorder.video_store import VideoStore
from helpers import episode


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
