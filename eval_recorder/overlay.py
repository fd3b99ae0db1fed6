"""The burned-in label: a small text strip along the bottom of each frame saying what the
video is (``label_text``), drawn into RGB or yuv420p frames (what the recorder encodes);
the pixels above the strip are untouched.

The strip is PIL's ``ImageDraw.text`` of the label (white, on a dark band), byte for byte.
Drawing it and converting it to yuv420p anew for every frame would be mostly wasted work:
from one frame to the next only a digit or two change. So each frame size keeps its
strip (text mask, RGB, yuv420p) and redraws only the columns whose glyphs changed: the
glyphs are FreeType's bitmaps of each character, cached, placed where PIL's basic layout
puts them (advances and kerning in 1/64 px, rounded per glyph) and blended as PIL's
renderer blends them; only those columns are converted to yuv420p (4:2:0 blocks are
2 px wide, so a column range converts on its own). Text outside printable ASCII, or a
font PIL lays out otherwise, is drawn by PIL whole.
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from eval_recorder.yuv import planes, rgb_to_yuv420p

__all__ = ["burn_label", "burn_label_in_place", "burn_label_yuv420p", "label_text", "strip_height"]

_BACKGROUND = (20, 20, 20)
_INK = (255, 255, 255)
_LEFT = 4  # px from the left edge to the text's anchor
_STRIPS = 16  # frame sizes whose strips are kept (a runner records a few sizes at most)
_PIECES = 256  # converted column ranges kept per strip (a few KB each), oldest dropped first
_PRINTABLE = frozenset(chr(code) for code in range(0x20, 0x7F))


def label_text(*, training_iteration: int | None, step: int, extra: str | None = None) -> str:
    """``iteration 12 | step 40 | arrived 1/3``: training iteration of the weights, env step of
    the episode, and what the frame source adds (Flatland: agents arrived / total; other
    envs: the return so far)."""
    iteration = "?" if training_iteration is None else str(training_iteration)
    text = f"iteration {iteration} | step {step}"
    return f"{text} | {extra}" if extra else text


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def strip_height(frame_height: int) -> int:
    """Height in pixels (even) of the label strip on a frame of ``frame_height``."""
    height = max(14, frame_height // 20)
    return height + height % 2


def _band(width: int, height: int, text: str) -> np.ndarray:
    """The strip drawn by PIL, whole: what ``_Strip`` reproduces column by column."""
    strip = strip_height(height)
    band = Image.new("RGB", (width, strip), _BACKGROUND)
    ImageDraw.Draw(band).text((_LEFT, strip // 2), text, fill=_INK, font=_font(max(10, strip - 4)), anchor="lm")
    return np.asarray(band)


def burn_label(frame: np.ndarray, text: str) -> np.ndarray:
    """A copy of the RGB ``frame`` with ``text`` in white on a dark strip at the bottom."""
    labelled = frame.copy()
    burn_label_in_place(labelled, text)
    return labelled


def burn_label_yuv420p(frame: np.ndarray, text: str) -> np.ndarray:
    """A copy of the yuv420p ``frame`` ((h * 3 / 2, w) planes) with the label strip of
    ``burn_label``, converted to yuv420p as the renderer converts (only the strip is)."""
    labelled = frame.copy()
    burn_label_in_place(labelled, text, pixel_format="yuv420p")
    return labelled


def burn_label_in_place(frame: np.ndarray, text: str, *, pixel_format: str = "rgb24") -> None:
    """Write the label strip of ``text`` into ``frame``: "rgb24" (h, w, 3) or "yuv420p"
    (h * 3 // 2, w) uint8 with even sides. Only the strip's rows are written."""
    if pixel_format == "rgb24":
        height, width = frame.shape[:2]
        _strip(width, height).rgb(text, out=frame[height - strip_height(height) :])
    elif pixel_format == "yuv420p":
        height, width = frame.shape[0] * 2 // 3, frame.shape[1]
        top = height - strip_height(height)
        y, u, v = planes(frame)
        _strip(width, height).yuv420p(text, y=y[top:], u=u[top // 2 :], v=v[top // 2 :])
    else:
        raise ValueError(f"pixel_format must be 'rgb24' or 'yuv420p', got {pixel_format!r}")


_strips: OrderedDict[tuple[int, int], "_Strip"] = OrderedDict()


def _strip(width: int, height: int) -> "_Strip":
    """The kept strip of a frame size (least recently used sizes are dropped)."""
    key = (width, height)
    strip = _strips.get(key)
    if strip is None:
        strip = _strips[key] = _Strip(width, height)
        while len(_strips) > _STRIPS:
            _strips.popitem(last=False)
    else:
        _strips.move_to_end(key)
    return strip


class _Glyphs:
    """One font's glyph bitmaps, advances and kerning, as PIL's basic layout uses them."""

    def __init__(self, font: ImageFont.FreeTypeFont) -> None:
        self._font = font
        self._bitmaps: dict[str, tuple[np.ndarray, int, int]] = {}
        self._advances: dict[str, int] = {}
        self._kerning: dict[tuple[str, str], int] = {}

    def bitmap(self, char: str) -> tuple[np.ndarray, int, int]:
        """(mask, x, y): the glyph's coverage and its top-left relative to the anchor, pen at 0."""
        found = self._bitmaps.get(char)
        if found is None:
            mask, (x, y) = self._font.getmask2(char, "L", anchor="lm")
            width, height = mask.size
            pixels = np.frombuffer(bytes(mask), dtype=np.uint8).reshape(height, width) if width and height else None
            found = self._bitmaps[char] = (pixels, x, y)
        return found

    def advance(self, char: str) -> int:
        """The pen advance after ``char`` in 1/64 px."""
        found = self._advances.get(char)
        if found is None:
            found = self._advances[char] = round(self._font.getlength(char) * 64)
        return found

    def kerning(self, left: str, right: str) -> int:
        """What kerning adds to the pen between ``left`` and ``right``, in 1/64 px."""
        found = self._kerning.get((left, right))
        if found is None:
            pair = round(self._font.getlength(left + right) * 64)
            found = self._kerning[(left, right)] = pair - self.advance(left) - self.advance(right)
        return found

    def layout(self, text: str, anchor_x: int, anchor_y: int) -> list[tuple[str, int, int]]:
        """(char, left, top) of every glyph of ``text``; pen positions rounded as FreeType's PIXEL()."""
        placed = []
        pen = 0
        last = len(text) - 1
        for index, char in enumerate(text):
            _, x, y = self.bitmap(char)
            placed.append((char, anchor_x + x + ((pen + 32) >> 6), anchor_y + y))
            pen += self.advance(char)
            if index < last:
                pen += self.kerning(char, text[index + 1])
        return placed


@functools.lru_cache(maxsize=8)
def _glyphs(size: int) -> _Glyphs | None:
    font = _font(size)
    if not isinstance(font, ImageFont.FreeTypeFont) or font.layout_engine != ImageFont.Layout.BASIC:
        return None  # PIL without FreeType, or with Raqm: its own layout; drawn whole
    return _Glyphs(font)


@functools.lru_cache(maxsize=1)
def _ink_table() -> np.ndarray:
    """RGB of the strip per coverage 0..255: PIL's ink-through-mask blend on the background."""
    band = Image.new("RGB", (256, 1), _BACKGROUND)
    band.paste(_INK, (0, 0), Image.frombytes("L", (256, 1), bytes(range(256))))
    return np.asarray(band)[0].copy()


class _Strip:
    """The label strip of one frame size, kept for the last text and redrawn where it changes.

    Holds the coverage mask of the text, its RGB and (made when asked) its yuv420p planes.
    ``_yuv_dirty`` is the column range whose yuv420p is out of date with the RGB.
    """

    def __init__(self, width: int, frame_height: int) -> None:
        self.width, self.frame_height = width, frame_height
        self.height = strip_height(frame_height)
        self._anchor = (_LEFT, self.height // 2)
        self._glyphs = _glyphs(max(10, self.height - 4))
        self._text: str | None = None
        self._placed: list[tuple[str, int, int]] | None = None  # None: drawn whole by PIL
        self._mask = np.zeros((self.height, width), dtype=np.uint8)
        self._rgb = np.empty((self.height, width, 3), dtype=np.uint8)
        self._rgb[:] = _BACKGROUND
        self._yuv: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._yuv_dirty = (0, width)
        self._pieces: dict[tuple[int, bytes], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def rgb(self, text: str, *, out: np.ndarray) -> None:
        self._update(text)
        out[...] = self._rgb

    def yuv420p(self, text: str, *, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        self._update(text)
        start, stop = self._yuv_dirty
        if self._yuv is None:
            self._yuv = planes(np.empty((self.height * 3 // 2, self.width), dtype=np.uint8))
            start, stop = 0, self.width
        if start < stop:
            start, stop = start - start % 2, min(self.width, stop + stop % 2)
            for whole, piece, scale in zip(self._yuv, self._yuv420p_of(start, stop), (1, 2, 2)):
                whole[:, start // scale : stop // scale] = piece
            self._yuv_dirty = (self.width, 0)
        y[...], u[...], v[...] = self._yuv

    def _yuv420p_of(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """yuv420p of the strip's columns [start, stop) (even), kept by their text coverage:
        from one frame to the next it is mostly the same few digits that are redrawn."""
        key = (stop - start, self._mask[:, start:stop].tobytes()) if self._placed is not None else None
        found = self._pieces.get(key) if key is not None else None
        if found is None:
            found = planes(rgb_to_yuv420p(np.ascontiguousarray(self._rgb[:, start:stop])))
            if key is not None:
                self._pieces[key] = found
                if len(self._pieces) > _PIECES:
                    del self._pieces[next(iter(self._pieces))]
        return found

    def _update(self, text: str) -> None:
        if text == self._text:
            return
        composable = self._glyphs is not None and _PRINTABLE.issuperset(text)
        if not composable:
            self._rgb[:] = _band(self.width, self.frame_height, text)
            self._placed = None
            self._changed(0, self.width)
        else:
            placed = self._glyphs.layout(text, *self._anchor)
            if self._placed is None:
                start, stop = 0, self.width
            else:
                start, stop = self._changed_columns(self._placed, placed)
            self._placed = placed
            if start < stop:
                self._compose(placed, start, stop)
                self._rgb[:, start:stop] = _ink_table()[self._mask[:, start:stop]]
                self._changed(start, stop)
        self._text = text

    def _changed_columns(self, old, new) -> tuple[int, int]:
        """Columns covered by the glyphs that differ (char or place) between two layouts."""
        same = 0
        for a, b in zip(old, new):
            if a != b:
                break
            same += 1
        same_end = 0
        for a, b in zip(reversed(old[same:]), reversed(new[same:])):
            if a != b:
                break
            same_end += 1
        start, stop = self.width, 0
        for char, left, _ in old[same : len(old) - same_end] + new[same : len(new) - same_end]:
            pixels = self._glyphs.bitmap(char)[0]
            if pixels is not None:
                start, stop = min(start, left), max(stop, left + pixels.shape[1])
        return max(0, start), min(self.width, stop)

    def _compose(self, placed, start: int, stop: int) -> None:
        """Redraw the mask in columns [start, stop): every glyph there, blended in text order."""
        mask = self._mask
        mask[:, start:stop] = 0
        for char, left, top in placed:
            pixels = self._glyphs.bitmap(char)[0]
            if pixels is None or left >= stop or left + pixels.shape[1] <= start:
                continue
            x0, x1 = max(left, start), min(left + pixels.shape[1], stop)
            y0, y1 = max(top, 0), min(top + pixels.shape[0], self.height)
            if y0 >= y1:
                continue
            source = pixels[y0 - top : y1 - top, x0 - left : x1 - left]
            target = mask[y0:y1, x0:x1]
            if not target.any():
                target[...] = source  # no glyph there yet: PIL copies the coverage
                continue
            # Overlapping glyphs, as FreeType's renderer in PIL: s + t * (255 - s) / 255 where both are set.
            s, t = source.astype(np.uint32), target.astype(np.uint32)
            blend = t * (255 - s) + 128
            both = np.minimum(s + ((blend + (blend >> 8)) >> 8), 255)
            target[...] = np.where(s > 0, np.where(t > 0, both, s), t)

    def _changed(self, start: int, stop: int) -> None:
        dirty_start, dirty_stop = self._yuv_dirty
        self._yuv_dirty = (min(dirty_start, start), max(dirty_stop, stop))
