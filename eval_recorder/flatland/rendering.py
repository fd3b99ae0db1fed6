"""Off-screen frames of a Flatland ``RailEnv`` (what ``render: human`` records).

``FrameRenderer`` makes, one frame per call, the picture flatland's
``RenderTool(env, gl="PILSVG")`` draws, off-screen (no display needed) and scaled to
``max_side``: as RGB (``render``) or as the yuv420p the video encoder takes
(``render_yuv420p``). (The RGB → yuv420p conversion it patches cells with is the core's
eval_recorder.yuv; the frames it gives recording are counted by its frame source,
eval_recorder.flatland.frames.)

Why not call RenderTool per step: each RenderTool loads and recolours every tile image at
full size, and it resizes a 300 px tile for every cell it draws, composites six full-size
layers per frame and sleeps every frame. The rails do not move during an episode, so here:

* tiles are made lazily, by flatland's own recipe (same files, same compositing,
  rotation and recolouring, same resize), and kept only at cell size;
* the static picture (rails, scenery, stations) is drawn once per episode with
  flatland's layer structure and placement rules;
* each step pastes the trains onto an agent layer and composites only the cells they
  touch, in flatland's layer order (rails, stations, trains, selected station);
* for the encoder, only those cells are converted to yuv420p, patched into the static
  picture's yuv420p (converted once per episode); a cell whose trains did not change
  since it was last converted (a waiting train) reuses that conversion;
* tiles are shared by every renderer of the process (a runner's envs) and train tiles
  are made per turn and colour as they first appear.

Pixel for pixel this is RenderTool's frame (tests/test_rendering.py compares every
frame of an episode). The placement rules and tile tables below mirror flatland-rl
4.3's ``rendertools.RenderLocal.render_env_svg`` and ``graphics_pil.PILSVG``.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from eval_recorder.frames import DEFAULT_MAX_SIDE, scaled_size
from eval_recorder.yuv import even_size, planes, rgb_to_yuv420p

__all__ = ["FrameRenderer", "frame_size"]


class FrameRenderer:
    """Render the current state of ``rail_env`` as an RGB frame with even sides.

    ``max_side`` caps the longest side in pixels (0 = flatland's own size, no cap). Flatland
    sizes its picture for an 800x600 screen, so with the default cap ordinary grids keep
    flatland's own size; only very large grids (a few pixels per cell) are scaled down.
    Call ``new_episode()`` after the env was reset: the rails may have been regenerated.
    Frames are flatland's ``RenderTool(env, gl="PILSVG")`` picture (agents drawn one
    step behind, inactive agents hidden), cropped to even sides and, if larger than
    ``max_side``, scaled down (bilinear).
    """

    def __init__(self, rail_env, *, max_side: int = DEFAULT_MAX_SIDE) -> None:
        if max_side < 0:
            raise ValueError(f"max_side must be >= 0 (0 = no cap), got {max_side}")
        self._env = rail_env
        self._max_side = max_side
        self._tiles: _Tiles | None = None
        self._scene: _Scene | None = None

    def new_episode(self) -> None:
        """Draw the static picture (rails, scenery, stations) of the env as it is now."""
        geometry = _Geometry.of(self._env)
        if self._tiles is None or self._tiles.cell_px != geometry.cell_px:
            self._tiles = _tiles(geometry.cell_px)
        self._scene = _Scene(self._env, geometry, self._tiles, self._max_side)

    def render(self) -> np.ndarray:
        """The frame of the env's current state, (height, width, 3) uint8 RGB, even sides."""
        return self._current_scene().render()

    def render_yuv420p(self) -> np.ndarray:
        """The same frame as ``render()``, as planar YUV 4:2:0 (BT.601, limited range).

        Shape (height * 3 // 2, width): the Y plane, then U, then V, as
        ``av.VideoFrame.from_ndarray(..., format="yuv420p")`` takes it. Only the cells the
        trains touch are converted per step (the static picture is converted once per
        episode), which spares the encoder a full-frame colour conversion per frame.
        """
        return self._current_scene().render_yuv420p()

    def _current_scene(self) -> "_Scene":
        if self._scene is None:
            self.new_episode()
        return self._scene


def frame_size(rail_env, *, max_side: int = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """(width, height) of the frames ``FrameRenderer(rail_env, max_side=max_side)`` draws, without drawing."""
    geometry = _Geometry.of(rail_env)
    return scaled_size(*even_size(geometry.width_px, geometry.height_px), max_side)


# ---- geometry and tiles, as flatland's PILGL / PILSVG make them ------------------------


@dataclass(frozen=True)
class _Geometry:
    rows: int
    cols: int
    cell_px: int
    width_px: int
    height_px: int

    @classmethod
    def of(cls, rail_env) -> "_Geometry":
        # PILGL.__init__ with jupyter=False and its default 800x600 "screen", linewidth 4.
        screen_width, screen_height, linewidth = 800, 600, 4
        width, height = rail_env.width, rail_env.height
        w = (screen_width - width - 10) / (width + 1 + linewidth)
        h = (screen_height - height - 10) / (height + 1 + linewidth)
        cell_px = int(max(1, np.ceil(min(w, h))))
        return cls(height, width, cell_px, width * cell_px + linewidth, height * cell_px + linewidth)


# PILGL.agent_colors
_AGENT_COLORS = [
    tuple(int(code[i : i + 2], 16) for i in (0, 2, 4))
    for code in (
        "d50000#c51162#aa00ff#6200ea#304ffe#2962ff#0091ea#00b8d4#00bfa5#00c853"
        "#64dd17#aeea00#ffd600#ffab00#ff6d00#ff3d00#5d4037#455a64"
    ).split("#")
]
_PAINT = (0xD5, 0x00, 0x00)  # the colour in flatland's train images that is repainted per agent

# PILSVG.load_rail: rail tile images by transitions ("NE WS": enter heading N, leave heading E ...)
_RAIL_FILES = {
    "": "Background_Light_green.png",
    "WE": "Gleis_Deadend.png",
    "WW EE NN SS": "Gleis_Diamond_Crossing.png",
    "WW EE": "Gleis_horizontal.png",
    "EN SW": "Gleis_Kurve_oben_links.png",
    "WN SE": "Gleis_Kurve_oben_rechts.png",
    "ES NW": "Gleis_Kurve_unten_links.png",
    "NE WS": "Gleis_Kurve_unten_rechts.png",
    "NN SS": "Gleis_vertikal.png",
    "NN SS EE WW ES NW SE WN": "Weiche_Double_Slip.png",
    "EE WW EN SW": "Weiche_horizontal_oben_links.png",
    "EE WW SE WN": "Weiche_horizontal_oben_rechts.png",
    "EE WW ES NW": "Weiche_horizontal_unten_links.png",
    "EE WW NE WS": "Weiche_horizontal_unten_rechts.png",
    "NN SS EE WW NW ES": "Weiche_Single_Slip.png",
    "NE NW ES WS": "Weiche_Symetrical.png",
    "NN SS EN SW": "Weiche_vertikal_oben_links.png",
    "NN SS SE WN": "Weiche_vertikal_oben_rechts.png",
    "NN SS NW ES": "Weiche_vertikal_unten_links.png",
    "NN SS NE WS": "Weiche_vertikal_unten_rechts.png",
    "NE NW ES WS SS NN": "Weiche_Symetrical_gerade.png",
    "NE EN SW WS": "Gleis_Kurve_oben_links_unten_rechts.png",
}
_LEVEL_FREE_DIAMOND = 666  # PILGL.DIAMOND_CROSSING_LEVEL_FREE_PSEUDO_TRANSITION
_DIAMOND_CROSSING = 0b1000010000100001  # RailEnvTransitionsEnum.diamond_crossing (tests), not imported: see _flatland_images
_LEVEL_FREE_FILE = "Gleis_Diamond_Crossing_Level_Free.png"
_BUILDING_FILES = [
    "Buildings-Bank.png", "Buildings-Bar.png", "Buildings-Wohnhaus.png", "Buildings-Hochhaus.png",
    "Buildings-Hotel.png", "Buildings-Office.png", "Buildings-Polizei.png", "Buildings-Post.png",
    "Buildings-Supermarkt.png", "Buildings-Tankstelle.png", "Buildings-Fabrik_A.png", "Buildings-Fabrik_B.png",
    "Buildings-Fabrik_C.png", "Buildings-Fabrik_D.png", "Buildings-Fabrik_E.png", "Buildings-Fabrik_F.png",
    "Buildings-Fabrik_G.png", "Buildings-Fabrik_H.png", "Buildings-Fabrik_I.png",
]  # fmt: skip
_SCENERY_FILES = [
    "Scenery-Laubbaume_A.png", "Scenery-Laubbaume_B.png", "Scenery-Laubbaume_C.png",
    "Scenery-Nadelbaume_A.png", "Scenery-Nadelbaume_B.png", "Scenery-Bergwelt_B.png",
]  # fmt: skip
_SCENERY_D2_FILES = ["Scenery-Bergwelt_C_Teil_1_links.png", "Scenery-Bergwelt_C_Teil_2_rechts.png"]
_SCENERY_D3_FILES = [
    "Scenery-Bergwelt_A_Teil_1_links.png", "Scenery-Bergwelt_A_Teil_2_mitte.png",
    "Scenery-Bergwelt_A_Teil_3_rechts.png",
]  # fmt: skip
_WATER_FILE = "Scenery_Water.png"
# PILSVG.load_agent: train images by (direction in, direction out)
_TRAIN_FILES = {(0, 0): "Zug_Gleis_#0091ea.png", (1, 2): "Zug_1_Weiche_#0091ea.png", (0, 3): "Zug_2_Weiche_#0091ea.png"}


@functools.lru_cache(maxsize=1)
def _flatland_images():
    """flatland's folder of tile images (a Traversable), found without importing flatland: its
    package ``__init__`` reads its installed metadata (``importlib.metadata`` and ``email``: 1.7 MB
    of RSS and 58 modules in the drawing helper, which needs none of them)."""
    from importlib.util import find_spec

    spec = find_spec("flatland")  # a top-level package's spec: found, not imported
    locations = spec.submodule_search_locations if spec is not None else None
    for location in locations or []:
        folder = Path(location) / "png"
        if folder.is_dir():
            return folder
    import importlib_resources  # flatland not installed as plain files: through its package

    return importlib_resources.files("flatland.png")


def _rotated(transitions: int, rotation: int) -> int:
    """``transitions`` (flatland's 16-bit cell transitions: 4 bits of exits per entry direction
    N, E, S, W, N's in the top bits) turned clockwise by ``rotation`` degrees (0, 90, 180, 270): flatland's
    ``RailEnvTransitions().rotate_transition``, the same for every value (tests), without
    importing flatland in the drawing helper (see ``_flatland_images``)."""
    turns = rotation // 90
    turned = 0
    for block in range(4):  # each direction's exits turn with the cell...
        exits = (transitions >> (4 * block)) & 0xF
        turned |= (((exits >> turns) | (exits << (4 - turns))) & 0xF) << (4 * block)
    return ((turned << (16 - 4 * turns)) | (turned >> (4 * turns))) & 0xFFFF  # ...and so does each entry


def _rail_sources() -> dict[int, tuple[str, int]]:
    """{binary transitions: (file, clockwise rotation)}, later entries winning as in load_pngs."""
    sources: dict[int, tuple[str, int]] = {}
    for description, file in _RAIL_FILES.items():
        bits = ["0"] * 16
        for pair in description.split(" "):
            if len(pair) == 2:
                bits[4 * "NESW".index(pair[0]) + "NESW".index(pair[1])] = "1"
        binary = int("".join(bits), 2)
        sources[binary] = (file, 0)
        for rotation in (90, 180, 270):
            sources[_rotated(binary, rotation)] = (file, rotation)
    return sources


def _paint_mask(rgba: np.ndarray, base) -> np.ndarray:
    """Pixels whose RGB is exactly ``base`` (PILSVG.recolor_image's mask)."""
    return (rgba[:, :, 0] == base[0]) & (rgba[:, :, 1] == base[1]) & (rgba[:, :, 2] == base[2])


def _recolored(image: Image.Image, base, color) -> Image.Image:
    """PILSVG.recolor_image for one colour: pixels exactly ``base`` become ``color``."""
    rgba = np.array(image)
    rgba[_paint_mask(rgba, base), 0:3] = color
    return Image.fromarray(rgba)


class _Tiles:
    """flatland's PILSVG tile images, made on first use and kept only at cell size.

    Each tile goes through flatland's steps (file → RGBA → composited on its background →
    rotated → recoloured) at the files' 300 px and is then resized to the cell as
    ``PILGL.draw_image_xy`` does; the full-size intermediates are dropped. Train tiles are
    made per turn and agent colour as trains first show them. One instance per cell size
    serves every renderer of the process (``_tiles``).
    """

    def __init__(self, cell_px: int) -> None:
        self.cell_px = cell_px
        self._rail_sources = _rail_sources()
        self._cache: dict[object, Image.Image | np.ndarray] = {}
        self._files: dict[str, Image.Image] = {}  # decoded backgrounds, kept while a scene is drawn
        self._train_files: dict[str, tuple[Image.Image, np.ndarray]] = {}  # decoded, with their paint masks

    def release_files(self) -> None:
        """Drop the decoded full-size images (tiles made so far are kept)."""
        self._files.clear()

    def has_rail(self, transitions: int) -> bool:
        return transitions in self._rail_sources or transitions == _LEVEL_FREE_DIAMOND

    def rail(self, transitions: int) -> Image.Image:
        return self._tile(("rail", transitions), lambda: self._rail_full(transitions))

    def station(self, transitions: int, station: int) -> Image.Image:
        def make():
            mark = _recolored(self._file("Bahnhof_#d50000_target.png"), [0, 0, 0], _AGENT_COLORS[station % 18])
            return Image.alpha_composite(self._rail_full(transitions), mark)

        return self._tile(("station", transitions, station), make)

    def selected_target(self) -> Image.Image:
        return self._tile("selected_target", lambda: self._file("Selected_Target.png"))

    def building(self, index: int) -> Image.Image:
        return self._tile(("building", index), lambda: self._on("Background_city.png", _BUILDING_FILES[index]))

    def scenery(self, index: int) -> Image.Image:
        return self._tile(("scenery", index), lambda: self._on("Background_Light_green.png", _SCENERY_FILES[index]))

    def scenery_d2(self, index: int) -> Image.Image:
        return self._tile(("d2", index), lambda: self._on("Background_Light_green.png", _SCENERY_D2_FILES[index]))

    def scenery_d3(self, index: int) -> Image.Image:
        return self._tile(("d3", index), lambda: self._on("Background_Light_green.png", _SCENERY_D3_FILES[index]))

    def water(self) -> Image.Image:
        return self._tile("water", lambda: self._on("Background_Light_green.png", _WATER_FILE))

    def white(self) -> Image.Image:
        return self._tile("white", lambda: self._file("Background_white.png").convert("RGBA"))

    def train(self, direction_in: int, direction_out: int, color_index: int) -> Image.Image:
        """PILSVG.load_agent's image of one turn in one agent colour, made when first asked for."""
        key = ("train", direction_in, direction_out, color_index)
        return self._tile(key, lambda: self._train_full(direction_in, direction_out, color_index))

    def train_pixels(self, direction_in: int, direction_out: int, color_index: int) -> np.ndarray:
        """``train(...)`` as an RGBA array."""
        key = ("train_pixels", direction_in, direction_out, color_index)
        pixels = self._cache.get(key)
        if pixels is None:
            pixels = self._cache[key] = np.asarray(self.train(direction_in, direction_out, color_index))
        return pixels

    def train_on_clear(self, direction_in: int, direction_out: int, color_index: int) -> np.ndarray:
        """What pasting ``train(...)`` onto a clear cell of the train layer gives (the usual case)."""
        key = ("train_on_clear", direction_in, direction_out, color_index)
        pixels = self._cache.get(key)
        if pixels is None:
            tile = self.train_pixels(direction_in, direction_out, color_index)
            pixels = np.empty_like(tile)
            pixels[:] = _CLEAR
            _paste_pixels(pixels, tile, (0, 0, tile.shape[1], tile.shape[0]))
            self._cache[key] = pixels
        return pixels

    def _train_full(self, direction_in: int, direction_out: int, color_index: int) -> Image.Image:
        """One turn's train image (rotated as load_agent rotates it), recoloured for one agent."""
        for (file_in, file_out), file in _TRAIN_FILES.items():
            for quarter in range(4):
                if ((file_in + quarter) % 4, (file_out + quarter) % 4) == (direction_in, direction_out):
                    image, paint = self._train_file(file)
                    pixels = np.asarray(image).view(np.uint32)[:, :, 0]  # RGBA bytes as one little-endian word
                    red, green, blue = _AGENT_COLORS[color_index]
                    painted = (pixels & np.uint32(0xFF000000)) | np.uint32(red | green << 8 | blue << 16)
                    rgba = np.where(paint, painted, pixels).astype("<u4").view(np.uint8)
                    return Image.fromarray(rgba.reshape(*paint.shape, 4)).rotate(-quarter * 90)
        raise KeyError((direction_in, direction_out))

    def _train_file(self, name: str) -> tuple[Image.Image, np.ndarray]:
        """A decoded train image and where it has the colour repainted per agent (kept; all of them are small)."""
        found = self._train_files.get(name)
        if found is None:
            image = self._file(name)
            found = self._train_files[name] = (image, _paint_mask(np.asarray(image), _PAINT))
        return found

    # -- helpers --

    def _tile(self, key, make) -> Image.Image:
        tile = self._cache.get(key)
        if tile is None:
            tile = self._cache[key] = self._cell_sized(make())
        return tile

    def _cell_sized(self, image: Image.Image) -> Image.Image:
        return image.resize((self.cell_px, self.cell_px))  # as PILGL.draw_image_xy does, per draw

    def _file(self, name: str) -> Image.Image:
        """A decoded flatland image file; only the shared backgrounds are kept (memory)."""
        image = self._files.get(name)
        if image is None:
            data = _flatland_images().joinpath(name).read_bytes()
            with io.BytesIO(data) as stream:
                image = Image.open(stream)
                image.load()
            if name.startswith("Background_"):
                self._files[name] = image
        return image

    def _on(self, background: str, name: str) -> Image.Image:
        return Image.alpha_composite(self._file(background).convert("RGBA"), self._file(name))

    def _rail_full(self, transitions: int) -> Image.Image:
        if transitions == _LEVEL_FREE_DIAMOND:
            file, rotation = _LEVEL_FREE_FILE, 0
        else:
            file, rotation = self._rail_sources[transitions]
        image = self._file(file).convert("RGBA")
        image = Image.alpha_composite(self._file("Background_rail.png").convert("RGBA"), image)
        image = Image.alpha_composite(image, self._file("Background_white_filter.png").convert("RGBA"))
        return image.rotate(-rotation) if rotation else image


# ---- one episode's picture -------------------------------------------------------------


def _layer(size: tuple[int, int], opacity: int) -> Image.Image:
    return Image.new("RGBA", size, (255, 255, 255, opacity))  # PILGL.create_image


_CLEAR = (255, 255, 255, 0)  # a pixel of an empty layer (PILGL.create_image with opacity 0)
_PATCHES = 1024  # boxes kept converted per episode (each a cell or two), oldest dropped first
_SHARED_TILES: dict[int, _Tiles] = {}


def _tiles(cell_px: int) -> _Tiles:
    """The tiles of a cell size, shared by every renderer of this process (e.g. a runner's envs)."""
    tiles = _SHARED_TILES.get(cell_px)
    if tiles is None:
        if len(_SHARED_TILES) >= 4:  # a few sizes at most; an old one is dropped
            del _SHARED_TILES[next(iter(_SHARED_TILES))]
        tiles = _SHARED_TILES[cell_px] = _Tiles(cell_px)
    return tiles


class _SparseLayer:
    """A full-frame RGBA layer that is clear (``_CLEAR``) but for a few cells, kept as the
    pixels of those cells only: the stations (layer 2) and the selected station's mark
    (layer 5) take a few cells' worth of memory instead of a full frame each."""

    def __init__(self, pixels: np.ndarray, cell_px: int) -> None:
        cells = np.unique(np.argwhere(pixels[:, :, 3] > 0) // cell_px, axis=0) * cell_px
        self._pieces = [  # (top, left, pixels of the cell, cut at the frame's edge)
            (top, left, pixels[top : top + cell_px, left : left + cell_px].copy()) for top, left in cells.tolist()
        ]

    def region(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """The layer's pixels in the box (x0, y0, x1, y1): (y1 - y0, x1 - x0, 4)."""
        region = np.empty((y1 - y0, x1 - x0, 4), np.uint8)
        region[...] = _CLEAR
        for top, left, piece in self._pieces:
            bottom, right = top + piece.shape[0], left + piece.shape[1]
            if _overlap((x0, y0, x1, y1), (top, left, bottom, right)):
                region[max(top, y0) - y0 : min(bottom, y1) - y0, max(left, x0) - x0 : min(right, x1) - x0] = piece[
                    max(y0, top) - top : min(y1, bottom) - top, max(x0, left) - left : min(x1, right) - left
                ]
        return region

    def pick(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The layer's pixels at the broadcast index arrays ``rows``, ``cols`` (``_box_indices``)."""
        picked = np.empty((*np.broadcast_shapes(rows.shape, cols.shape), 4), np.uint8)
        picked[...] = _CLEAR
        for top, left, piece in self._pieces:
            inside_rows = (rows >= top) & (rows < top + piece.shape[0])
            inside_cols = (cols >= left) & (cols < left + piece.shape[1])
            inside = inside_rows & inside_cols
            if inside.any():
                at = piece[np.clip(rows - top, 0, piece.shape[0] - 1), np.clip(cols - left, 0, piece.shape[1] - 1)]
                picked[inside] = at[inside]
        return picked


class _Scene:
    """The static layers of one episode, and the per-step compositing of the trains.

    flatland's layers, bottom to top: 0 rails and scenery (opaque), 1 predictions (unused),
    2 stations, 3 trains, 4 selected agent (unused), 5 selected station. Kept as arrays:
    ``_below_px`` (layers 0-2 composited) and ``_trains`` (3), full size; ``_stations``
    (2) and ``_selected_mark`` (5), only their cells that are not clear (``_SparseLayer``);
    the frame without trains in the form frames are made from: ``_static_yuv`` (yuv420p),
    or ``_static`` (RGB) when frames are scaled. A step copies the static frame and
    recomposites only the boxes the trains were drawn into;
    ``_patches`` keeps the yuv420p of recent boxes by their layer 3 pixels, so a box whose
    trains did not change (a train waiting) is pasted again without compositing.
    """

    def __init__(self, rail_env, geometry: _Geometry, tiles: _Tiles, max_side: int) -> None:
        self._env = rail_env
        self._geometry = geometry
        self._tiles = tiles
        size = (geometry.width_px, geometry.height_px)
        self._rails = _layer(size, 255)  # PIL layers while the static picture is drawn
        stations = _layer(size, 0)
        self._selected = _layer(size, 0)
        self._draw_rails(stations)
        tiles.release_files()
        self._below_px = np.array(Image.alpha_composite(self._rails, stations))
        del self._rails
        self._stations = _SparseLayer(np.asarray(stations), geometry.cell_px)
        selected = np.asarray(self._selected)
        del self._selected, stations
        marked = np.argwhere(selected[:, :, 3] > 0)  # layer 5 is empty but for one station's mark
        self._selected_box = (*marked.min(axis=0), *(marked.max(axis=0) + 1)) if len(marked) else None  # y0 x0 y1 x1
        self._selected_mark = _SparseLayer(selected, geometry.cell_px)
        del selected
        self._trains = np.array(_layer(size, 0))  # layer 3, drawn as PIL would, in numpy
        width, height = even_size(geometry.width_px, geometry.height_px)
        self._even = (width, height)
        self._out_size = scaled_size(width, height, max_side)
        self._static: np.ndarray | None = None
        self._static_yuv: np.ndarray | None = None
        self._keep_static()
        self._rail_grid = rail_env.rail.grid
        # {(box, its layer 3 pixels): its yuv420p}: a train that waits draws the same box again
        self._patches: dict[tuple[tuple[int, int, int, int], bytes], tuple[np.ndarray, ...]] = {}

    def render(self) -> np.ndarray:
        frame = self._static.copy() if self._static is not None else self._static_picture()
        for boxes, rgb in self._changed_boxes():
            rows, cols = _box_indices(boxes, rgb.shape[1], rgb.shape[2])
            frame[rows, cols] = rgb
        if self._out_size != self._even:
            frame = np.asarray(Image.fromarray(frame).resize(self._out_size, Image.BILINEAR))
        return frame

    def render_yuv420p(self) -> np.ndarray:
        if self._static_yuv is None:  # scaled frames: no cheap per-cell update
            return rgb_to_yuv420p(self.render())
        frame = self._static_yuv.copy()
        y_plane, u_plane, v_plane = planes(frame)
        for boxes, trains in self._drawn_groups():
            count, box_height, box_width = trains.shape[:3]
            keys = [(box, pixels.tobytes()) for box, pixels in zip(map(tuple, boxes.tolist()), trains)]
            patches = [self._patches.get(key) for key in keys]
            missing = [index for index, patch in enumerate(patches) if patch is None]
            if missing:
                rgb = self._composite(boxes[missing], trains[missing])
                stacked = rgb_to_yuv420p(rgb.reshape(len(missing) * box_height, box_width, 3))
                y, u, v = planes(stacked)
                for n, index in enumerate(missing):
                    patches[index] = self._keep_patch(keys[index], (y[n * box_height : (n + 1) * box_height],
                                                                    u[n * box_height // 2 : (n + 1) * box_height // 2],
                                                                    v[n * box_height // 2 : (n + 1) * box_height // 2]))  # fmt: skip
            rows, cols = _box_indices(boxes, box_height, box_width)
            y_plane[rows, cols] = np.stack([patch[0] for patch in patches])
            rows, cols = _box_indices(boxes // 2, box_height // 2, box_width // 2)
            u_plane[rows, cols] = np.stack([patch[1] for patch in patches])
            v_plane[rows, cols] = np.stack([patch[2] for patch in patches])
        return frame

    def _changed_boxes(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Draw the trains; where the frame differs from the static picture, and its RGB there.

        Returns groups of same-sized boxes: (boxes (n, 4) as x0, y0, x1, y1 with even
        corners, their RGB pixels (n, height, width, 3)).
        """
        return [(boxes, self._composite(boxes, trains)) for boxes, trains in self._drawn_groups()]

    def _drawn_groups(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Draw the trains; the boxes drawn into, rounded out to even corners, in groups of one
        size: (boxes (n, 4) as x0, y0, x1, y1, the train layer's pixels there (n, h, w, 4))."""
        width, height = self._even
        drawn = self._draw_trains()
        if not drawn:
            return []
        even = {  # corners rounded out to even, within the even-sided frame
            (x0 - x0 % 2, y0 - y0 % 2, min(x1 + x1 % 2, width), min(y1 + y1 % 2, height)) for x0, y0, x1, y1 in drawn
        }
        by_size: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
        for box in sorted(even):
            x0, y0, x1, y1 = box
            if x0 < x1 and y0 < y1:
                by_size.setdefault((y1 - y0, x1 - x0), []).append(box)
        trains = self._trains
        groups = []
        for (box_height, box_width), members in sorted(by_size.items()):
            boxes = np.array(members)
            rows, cols = _box_indices(boxes, box_height, box_width)
            groups.append((boxes, trains[rows, cols]))
        for x0, y0, x1, y1 in drawn:  # layer 3 is cleared for the next frame (PILGL.begin_frame)
            trains[y0:y1, x0:x1] = _CLEAR
        return groups

    def _composite(self, boxes: np.ndarray, trains: np.ndarray) -> np.ndarray:
        """RGB of same-sized boxes: layers 0-2, the given layer 3 pixels and layer 5, composited
        stacked in one go (compositing is per pixel, so this is flatland's full-frame result)."""
        count, box_height, box_width = trains.shape[:3]
        rows, cols = _box_indices(boxes, box_height, box_width)
        tall = (count * box_height, box_width, 4)
        composite = Image.alpha_composite(
            Image.fromarray(self._below_px[rows, cols].reshape(tall)), Image.fromarray(trains.reshape(tall))
        )
        selected = self._selected_box
        if selected is not None and any(_overlap(box, selected) for box in boxes.tolist()):
            mark = self._selected_mark.pick(rows, cols).reshape(tall)
            composite = Image.alpha_composite(composite, Image.fromarray(mark))
        # else layer 5 is transparent there, and compositing it changes nothing
        return np.asarray(composite)[:, :, :3].reshape(count, box_height, box_width, 3)

    def _keep_patch(self, key, patch) -> tuple[np.ndarray, ...]:
        """Keep a box's yuv420p for when the same trains are there again (a waiting train)."""
        kept = self._patches[key] = tuple(plane.copy() for plane in patch)
        if len(self._patches) > _PATCHES:  # the oldest goes
            del self._patches[next(iter(self._patches))]
        return kept

    # -- static picture: RenderLocal.update_background + render_env_svg's rail loop --

    def _draw_rails(self, stations_layer: Image.Image) -> None:
        env, tiles = self._env, self._tiles
        stations = _stations(env)
        distance = _distance_to_stations(env.width, env.height, stations)
        grid = env.rail.grid
        level_free = env.resource_map.level_free_positions
        diamond = _DIAMOND_CROSSING
        city_size = max(1, np.log(1 + env.get_num_agents()) / 2.5)
        for row in range(env.height):
            for col in range(env.width):
                transitions = int(grid[row, col])
                station = stations.get((row, col))
                if transitions == diamond and (row, col) in level_free:
                    transitions = _LEVEL_FREE_DIAMOND
                if tiles.has_rail(transitions):
                    if station is not None:
                        self._paste(stations_layer, tiles.station(transitions, station), row, col)
                    if transitions == 0:
                        track = self._scenery_tile(distance, grid, row, col, city_size)
                    else:
                        track = tiles.rail(transitions)
                    self._paste(self._rails, track, row, col)
                if station is not None:  # set_rail_at clears layer 5 for every station
                    self._selected = _layer(self._selected.size, 0)
                    self._paste(self._selected, tiles.selected_target(), row, col)

    def _scenery_tile(self, distance, grid, row, col, city_size) -> Image.Image:
        """PILSVG.set_rail_at for a cell without rails (may also draw on cells to its left)."""
        tiles = self._tiles
        track = tiles.rail(0)
        d = distance[col][row]
        if d <= 4 + np.ceil(((col * row + col) % 10) / city_size):
            a = int(d) % len(_BUILDING_FILES)
            if (col + row + col * row) % 13 > 11:
                track = tiles.scenery(a % len(_SCENERY_FILES))
            else:
                if (col + row + col * row) % 3 == 0:
                    a = (a + (col + row + col * row)) % len(_BUILDING_FILES)
                track = tiles.building(a)
        elif (d > 5 + ((col * row + col) % 3)) or ((col**3 + row**2 + col * row) % 10 == 0):
            a = int(d) - 4
            a2 = a + (col + row + col * row + col**3 + row**4)
            if a2 % 64 > 11:
                a = a2
            a_l = a % len(_SCENERY_FILES)
            if a2 % 50 == 49:
                track = tiles.water()
            else:
                track = tiles.scenery(a_l)
            mountain = a_l == len(_SCENERY_FILES) - 1
            if a2 % 11 > 3:
                if mountain and col > 1 and row % 7 == 1 and grid[row, col - 1] == 0:
                    self._paste(self._rails, tiles.scenery_d2(0), row, col - 1)
                    track = tiles.scenery_d2(1)
            elif mountain and col > 2 and not (row % 7 == 1):
                if grid[row, col - 2] == 0 and grid[row, col - 1] == 0:
                    self._paste(self._rails, tiles.scenery_d3(0), row, col - 2)
                    self._paste(self._rails, tiles.scenery_d3(1), row, col - 1)
                    track = tiles.scenery_d3(2)
        return track

    # -- trains: render_env_svg's agent loop (ONE_STEP_BEHIND) + PILSVG.set_agent_at --

    def _draw_trains(self) -> list[tuple[int, int, int, int]]:
        """Paste every active train onto layer 3 as PILSVG.set_agent_at does; the boxes drawn into.

        A train's cell is usually clear (the layer is cleared after each frame): then the
        tile as pasted onto a clear cell is copied. A cell drawn into already this frame
        (two trains on one cell, or the malfunction mark of a train next to it) is blended.
        """
        boxes: dict[tuple[int, int, int, int], None] = {}
        drawn: set[tuple[int, int]] = set()  # cells of layer 3 not clear any more
        trains, tiles = self._trains, self._tiles
        reach = -(-2 // self._geometry.cell_px)  # cells a malfunction mark (2 px around its cell) reaches
        for index, agent in enumerate(self._env.agents):
            if agent is None or agent.current_configuration is None:
                continue
            position, direction = agent.current_configuration
            if position is None:
                continue  # inactive agents are not shown
            if agent.old_configuration is not None and agent.old_configuration[0] is not None:
                position, direction_in = agent.old_configuration[0], agent.old_configuration[1]
            else:
                direction_in = direction
            row, col = position
            if (direction - direction_in) % 4 == 2:  # turning round at a dead end
                direction_in = direction
            turn = (direction_in % 4, direction % 4, index % 18)
            box = x0, y0, x1, y1 = self._cell_box(row, col, margin=0)
            if (row, col) in drawn:
                _paste_pixels(trains, tiles.train_pixels(*turn), box)
            else:
                trains[y0:y1, x0:x1] = tiles.train_on_clear(*turn)
                drawn.add((row, col))
            if self._rail_grid[row, col] == 0:  # a train off the rails: flatland whitens the cell
                self._whiten(box)
            if agent.malfunction_handler.malfunction_down_counter > 0:
                box = self._cell_box(row, col, margin=2)
                self._draw_malfunction(row, col, box)
                drawn.update((r, c) for r in range(row - reach, row + reach + 1) for c in range(col - reach, col + reach + 1))
            boxes[box] = None
        return list(boxes)

    def _draw_malfunction(self, row: int, col: int, box: tuple[int, int, int, int]) -> None:
        """PILSVG.draw_malfunction: a black 'X' of 2 px lines over the cell, on the train layer."""
        cell = self._geometry.cell_px
        x0, y0, x1, y1 = box
        corners = [(col, row), (col + 1, row + 1), (col, row + 1), (col + 1, row)]
        mask = Image.new("L", (x1 - x0, y1 - y0), 0)  # the same line drawn in box coordinates
        ImageDraw.Draw(mask).line([(x * cell - x0, y * cell - y0) for x, y in corners], fill=255, width=2)
        self._trains[y0:y1, x0:x1][np.asarray(mask) > 0] = (0, 0, 0, 255)

    def _whiten(self, box: tuple[int, int, int, int]) -> None:
        """PILSVG.set_agent_at under a train off the rails: an opaque white tile on layer 0, for good."""
        x0, y0, x1, y1 = box
        below = Image.alpha_composite(self._tiles.white(), Image.fromarray(self._stations.region(x0, y0, x1, y1)))
        self._below_px[y0:y1, x0:x1] = np.asarray(below)
        self._keep_static()
        self._patches.clear()  # made on the old layer 0

    def _keep_static(self) -> None:
        """Keep the frame without trains as frames are made from it: yuv420p, or RGB when scaled."""
        static = self._static_picture()
        if self._out_size == self._even:
            self._static_yuv = rgb_to_yuv420p(static)
        else:
            self._static = static

    def _static_picture(self) -> np.ndarray:
        """The frame without trains, RGB: layers 0-2 and, over them, the selected station's mark
        (layer 5 is clear elsewhere, and compositing a clear pixel keeps the one below)."""
        width, height = self._even
        static = self._below_px[:height, :width, :3].copy()  # layer 0 is opaque: so is the composite
        if self._selected_box is not None:
            top, left, bottom, right = (int(value) for value in self._selected_box)
            mark = Image.fromarray(self._selected_mark.region(left, top, right, bottom))
            composite = Image.alpha_composite(Image.fromarray(self._below_px[top:bottom, left:right]), mark)
            static[top:bottom, left:right] = np.asarray(composite.convert("RGB"))[: height - top, : width - left]
        return static

    def _cell_box(self, row: int, col: int, *, margin: int) -> tuple[int, int, int, int]:
        g = self._geometry
        return (
            max(0, col * g.cell_px - margin),
            max(0, row * g.cell_px - margin),
            min(g.width_px, (col + 1) * g.cell_px + margin),
            min(g.height_px, (row + 1) * g.cell_px + margin),
        )

    def _paste(self, layer: Image.Image, tile: Image.Image, row: int, col: int) -> None:
        cell = self._geometry.cell_px
        layer.paste(tile, (col * cell, row * cell), tile if tile.mode == "RGBA" else None)


def _stations(rail_env) -> dict[tuple[int, int], int]:
    """RenderLocal.update_background: every waypoint position, with station colour 4."""
    stations: dict[tuple[int, int], int] = {}
    for agent in rail_env.agents:
        if agent is None:
            continue
        for waypoints in agent.waypoints:
            for waypoint in waypoints:
                stations.setdefault(waypoint.position, 4)
    return stations


def _distance_to_stations(width: int, height: int, stations) -> np.ndarray:
    """PILGL.build_background_map, vectorised: [x][y] = 2 * floor(distance to nearest station)."""
    grid = np.full((width, height), float(int(np.ceil(np.sqrt(width**2.0 + height**2.0)))))
    if stations:
        xs = np.arange(width)[:, None, None]
        ys = np.arange(height)[None, :, None]
        rows = np.array([rc[0] for rc in stations])[None, None, :]
        cols = np.array([rc[1] for rc in stations])[None, None, :]
        d = (np.floor(np.sqrt((xs - cols) ** 2 + (ys - rows) ** 2)) / 0.5).astype(np.int64)
        grid = np.minimum(grid, d.min(axis=2))
    return grid


def _paste_pixels(layer: np.ndarray, tile: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """``Image.paste(tile, box, mask=tile)`` for RGBA arrays, with PIL's integer blend."""
    x0, y0, x1, y1 = box
    region = layer[y0:y1, x0:x1]
    alpha = tile[:, :, 3:4].astype(np.uint32)
    blend = region * (255 - alpha) + tile * alpha + 128
    region[:] = ((blend >> 8) + blend) >> 8


def _overlap(box: tuple[int, int, int, int], yx_box: tuple[int, int, int, int]) -> bool:
    """Whether ``box`` (x0, y0, x1, y1) and ``yx_box`` (y0, x0, y1, x1) share a pixel."""
    x0, y0, x1, y1 = box
    top, left, bottom, right = yx_box
    return x0 < right and left < x1 and y0 < bottom and top < y1


def _box_indices(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays that pick the (n, height, width) pixels of n boxes (x0, y0, ...) from an image."""
    rows = boxes[:, 1, None, None] + np.arange(height)[None, :, None]
    cols = boxes[:, 0, None, None] + np.arange(width)[None, None, :]
    return rows, cols
