"""Poster frames: the still a gallery shows in a video's box before the video plays. A
video's poster is its last frame (where the episode's outcome shows) as a JPEG beside it,
named with the video's stem (``poster_name``: ``<stem>.jpg`` next to ``<stem>.mp4``).

``last_frame_jpeg`` decodes a video's last frame (PyAV), from a keyframe near its end on,
and encodes that as JPEG (Pillow); ``write_poster`` publishes it in the video's folder
atomically, never over an existing name. Only the driver, which owns the folder, writes posters.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from eval_recorder.atomic_files import publish_file

__all__ = ["JPEG_QUALITY", "POSTER_SUFFIX", "last_frame_jpeg", "poster_name", "write_poster"]

POSTER_SUFFIX = ".jpg"
JPEG_QUALITY = 75  # Pillow's default: a still seen at about its video's size


def poster_name(video_name: str) -> str:
    """``flatland-it000012-ev0003-ep001-run1.jpg`` for ``flatland-it000012-ev0003-ep001-run1.mp4``."""
    return video_name.removesuffix(".mp4") + POSTER_SUFFIX


def last_frame_jpeg(video: bytes | Path, *, quality: int = JPEG_QUALITY) -> bytes:
    """The last frame of the video ``video`` (its bytes, or a file, opened without following
    a symlink) as JPEG bytes. The frames from the keyframe FFmpeg seeks to from the end (the
    last keyframe, or one before it) on are decoded, one at a time: an H.264 frame needs the
    ones before it back to its keyframe, an IDR frame from this project's encoder, after which
    nothing earlier is referenced. That is the same last frame as decoding every frame, in a
    fraction of the time once a video is longer than x264's keyframe interval (250 frames).
    Only the last frame is converted. ValueError if no frame decodes; PyAV's FFmpegError
    (a ValueError or OSError) if the video is damaged."""
    import av

    if isinstance(video, (bytes, bytearray, memoryview)):
        source = io.BytesIO(video)
    else:
        source = os.fdopen(os.open(video, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")
    with source, av.open(source, mode="r") as container:
        if not container.streams.video:
            raise ValueError("it holds no video stream")
        stream = container.streams.video[0]
        # backward from past the end: to a keyframe near the end
        container.seek(_PAST_THE_END, stream=stream, backward=True, any_frame=False)
        last, _ = _last_decoded(container, stream)
    if last is None:
        raise ValueError("it holds no video frames")
    out = io.BytesIO()
    last.to_image().save(out, format="JPEG", quality=quality)
    return out.getvalue()


_PAST_THE_END = 1 << 62  # a timestamp after any video's last frame, in any stream's time base


def _last_decoded(container, stream):
    """(the last frame decoded from where ``container`` stands to its end (None: none), how many were decoded)."""
    last, count = None, 0
    for count, last in enumerate(container.decode(stream), 1):
        pass
    return last, count


def write_poster(video: Path, *, mp4: bytes | None = None) -> Path | None:
    """Write the poster of the video file ``video`` beside it (decoded from ``mp4``, its
    bytes, if given, else from the file); its path, or None if a file of that name exists
    already (it is kept). Raises what decoding or writing raises (nothing is left then but,
    at worst, a hidden temporary file)."""
    video = Path(video)
    poster = video.with_name(poster_name(video.name))
    if os.path.lexists(poster):
        return None
    data = last_frame_jpeg(video if mp4 is None else mp4)
    return poster if publish_file(video.parent, data, poster) else None
