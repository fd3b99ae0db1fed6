"""Publishing to TensorBoard: the only module that writes TensorBoard event files.

``TensorBoardSink`` writes one event file per process into the run's folder, beside other event
files (Ray Tune's), so a resumed run shows as the same run: each video as an animated GIF (the
Images tab plays it) under a stable tag per episode slot, its caption as text, metrics as
scalars, at step = training iteration. A failure is logged once and turns the sink off.
"""

from __future__ import annotations

import io
import numbers
import os
import shlex
import socket
import threading
import time
from pathlib import Path

from eval_recorder.naming import numbered_stem, tracker_caption
from eval_recorder.sinks import Sink

__all__ = ["GIF_MAX_SIDE", "TensorBoardSink", "animated_gif", "caption_tag", "video_tag"]

# Longest side of the GIFs, in pixels: every frame of a video is held (as a palette image)
# while its GIF is made, and TensorBoard keeps the GIF in memory.
GIF_MAX_SIDE = 320


def video_tag(episode_index: int) -> str:
    """Stable tag: the same episode slot of every round lands on one image card."""
    return f"eval/video/episode_{episode_index}"


def caption_tag(episode_index: int) -> str:
    """Tag of the captions of ``video_tag(episode_index)``'s videos."""
    return f"eval/caption/episode_{episode_index}"


def animated_gif(path: Path, *, fps: float, max_side: int = GIF_MAX_SIDE) -> tuple[bytes, int, int]:
    """The video at ``path`` as an animated GIF playing at ``fps`` and looping forever, its
    longest side shrunk to ``max_side`` (aspect kept): (GIF bytes, width, height). Frames
    are decoded one by one; only the GIF's palette frames are held."""
    import av

    def shrunk(frame):
        image = frame.to_image()
        image.thumbnail((max_side, max_side))  # only ever shrinks
        return image

    with av.open(str(path)) as container:
        images = (shrunk(frame) for frame in container.decode(video=0))
        first = next(images, None)
        if first is None:
            raise ValueError(f"{Path(path).name} holds no video frames")
        out = io.BytesIO()
        first.save(out, format="GIF", save_all=True, append_images=images, duration=1000 / fps, loop=0)
    return out.getvalue(), first.width, first.height


class TensorBoardSink(Sink):
    """An event file in ``log_dir`` that videos and metrics are written to (does nothing
    once failed). Safe to call from several threads."""

    name = "tensorboard"

    def __init__(self, *, log_dir: Path, run_id: str) -> None:
        super().__init__()
        self.log_dir = Path(os.path.abspath(log_dir))
        self.run_id = run_id
        self.event_file: Path | None = None
        self._writer = None  # tensorboardX RecordWriter of event_file
        self._wrote = False
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self._writer is not None and not self._failed

    def start(self) -> None:
        """Open a new event file of this run in ``log_dir`` (a resumed run opens another one
        beside the earlier ones; none is ever overwritten)."""
        if self._writer is not None or self._failed:
            return
        try:
            from tensorboardX import RecordWriter
            from tensorboardX.proto.event_pb2 import Event
        except ImportError as error:
            self.fail("start", ModuleNotFoundError(f"TensorBoard logging needs tensorboardX ({error}): "
                                                   "pip install tensorboardX"))
            return
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            path = self._new_event_file()
            writer = RecordWriter(str(path))
            writer.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
            writer.flush()
        except Exception as error:
            self.fail("start", error)
            return
        self.event_file, self._writer = path, writer

    def _new_event_file(self) -> Path:
        """Create and return a fresh event file, named as TensorBoard's writers name theirs
        (``events.out.tfevents.<time>.<host>``) plus ``.eval_recorder.<run id>``, numbered
        if that name is taken."""
        stem = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.eval_recorder.{self.run_id}"
        attempt = 1
        while True:
            path = self.log_dir / numbered_stem(stem, attempt)
            try:
                path.open("xb").close()
                return path
            except FileExistsError:
                attempt += 1

    def log_video(self, path: Path, metadata: dict, *, step: int) -> None:
        """Write the video at ``path`` as an animated GIF under ``video_tag`` and its caption
        under ``caption_tag``, at ``step``."""
        if not self.active:
            return
        try:
            from tensorboardX.proto.summary_pb2 import Summary

            index = metadata["episode_index"]
            gif, width, height = animated_gif(Path(path), fps=float(metadata["fps"]))
            image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
            self._write([Summary(value=[Summary.Value(tag=video_tag(index), image=image)]),
                         _text_summary(caption_tag(index), tracker_caption(metadata))], step)
        except Exception as error:  # a publisher: its faults cost no local video
            self.fail("log video", error)

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        """Write each numeric value of ``metrics`` as a scalar at ``step`` (others are skipped)."""
        if not self.active:
            return
        try:
            from tensorboardX.summary import scalar

            summaries = [scalar(key, float(value)) for key, value in metrics.items()
                         if isinstance(value, numbers.Real)]
            if summaries:
                self._write(summaries, step)
        except Exception as error:
            self.fail("log metrics", error)

    def _write(self, summaries: list, step: int) -> None:
        """Append one event per summary at ``step`` and flush them to disk."""
        from tensorboardX.proto.event_pb2 import Event

        with self._lock:
            if self._writer is None:  # finished meanwhile
                return
            for summary in summaries:
                self._writer.write(Event(wall_time=time.time(), step=int(step), summary=summary).SerializeToString())
            self._writer.flush()
            self._wrote = True

    def finish(self, exit_code: int = 0, *, give_up: threading.Event | None = None) -> None:
        """Close the event file (whatever was written is on disk already). Safe to call twice."""
        with self._lock:
            writer, self._writer = self._writer, None
            if writer is None:
                return
            try:
                writer.close()
            except Exception as error:
                self.fail("finish", error)

    def where(self) -> list[str]:
        if not self._wrote:
            return []
        # TensorBoard keeps 10 images per tag unless told to keep them all.
        return [f"tensorboard: tensorboard --logdir {shlex.quote(str(self.log_dir))} --samples_per_plugin images=10000"]


def _text_summary(tag: str, text: str):
    """A text-plugin summary under exactly ``tag`` (tensorboardX's ``add_text`` appends
    ``/text_summary`` to the tag)."""
    from tensorboardX.proto.plugin_text_pb2 import TextPluginData
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboardX.proto.tensor_pb2 import TensorProto
    from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto

    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name="text", content=TextPluginData(version=0).SerializeToString()))
    tensor = TensorProto(dtype="DT_STRING", string_val=[text.encode()],
                         tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])
