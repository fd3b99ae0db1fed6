"""A small gymnasium env whose ``render()`` returns large RGB frames that change every step.

``ShapesEnv`` renders ``size`` x ``size`` ``rgb_array`` frames (default 800x800, the
``max_side`` cap): a fixed landscape (gradient, grid, buildings) with discs that move every
step, the kind of picture a generic env draws. benchmarks/recording.py uses it for the
"any env" cases, through the recorder's RGB path.

What a step costs is set by ``field``: ``step()`` moves the discs and relaxes a
``field`` x ``field`` height field (the stand-in for the simulation); ``render()`` draws
the frame with numpy (~2 ms at 800x800). With the default ``field=640`` a step and its
frame take ~6 ms on the benchmark machine: the low end of what an eval runner spends per
step with an env that renders 800x800 frames (its simulation, its rendering, and the
runner's own policy forward pass and connectors, which this env leaves out). ``field=64``
gives ~2 ms per step, an env faster than one core can encode 800x800 frames.
benchmarks/recording.py prints what env-only steps cost, so every figure about recording
can be read against it.
"""

from __future__ import annotations

import gymnasium
import numpy as np

__all__ = ["ShapesEnv"]


class ShapesEnv(gymnasium.Env):
    """Discs moving over a landscape; ``render()`` is a (size, size, 3) uint8 frame."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, size: int = 800, discs: int = 24, field: int = 640, render_mode: str = "rgb_array") -> None:
        self.size, self.discs, self.field = size, discs, field
        self.render_mode = render_mode
        self.action_space = gymnasium.spaces.Discrete(5)
        self.observation_space = gymnasium.spaces.Box(0.0, 1.0, shape=(discs, 2), dtype=np.float32)
        self._background = np.zeros((size, size, 3), dtype=np.uint8)
        self._positions = np.zeros((discs, 2))
        self._velocities = np.zeros((discs, 2))
        self._radii = np.zeros(discs, dtype=np.int64)
        self._colors = np.zeros((discs, 3), dtype=np.uint8)
        self._heights = np.zeros((field, field))
        self._steps = 0

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        rng = self.np_random
        size = self.size
        ramp = np.linspace(0, 1, size)[:, None]
        self._background[:] = (np.array([40, 110, 60]) + ramp * np.array([30, 60, 20])).astype(np.uint8)[:, None, :]
        self._background[::40] = self._background[:, ::40] = (90, 90, 90)  # a grid of roads
        for _ in range(30):  # buildings
            x, y = rng.integers(0, size - 60, size=2)
            w, h = rng.integers(20, 60, size=2)
            self._background[y : y + h, x : x + w] = rng.integers(60, 220, size=3)
        self._positions = rng.uniform(40, size - 40, size=(self.discs, 2))
        self._velocities = rng.uniform(-9, 9, size=(self.discs, 2))
        self._radii = rng.integers(8, 30, size=self.discs)
        self._colors = rng.integers(0, 255, size=(self.discs, 3), dtype=np.uint8)
        self._heights = rng.uniform(0, 1, size=(self.field, self.field))
        self._steps = 0
        return self._observation(), {}

    def step(self, action):
        self._steps += 1
        self._velocities[:, int(action) % 2] += (int(action) - 2) * 0.1
        self._positions += self._velocities
        for axis in range(2):  # bounce off the edges
            low, high = self._positions[:, axis] < 30, self._positions[:, axis] > self.size - 30
            self._velocities[low | high, axis] *= -1
            np.clip(self._positions[:, axis], 30, self.size - 30, out=self._positions[:, axis])
        for _ in range(4):  # the simulation: relax a height field
            h = self._heights
            h[1:-1, 1:-1] = 0.25 * (h[:-2, 1:-1] + h[2:, 1:-1] + h[1:-1, :-2] + h[1:-1, 2:])
        reward = float(self._heights.mean())
        return self._observation(), reward, False, False, {}

    def render(self) -> np.ndarray:
        frame = self._background.copy()
        for (x, y), radius, color in zip(self._positions.astype(np.int64), self._radii, self._colors):
            y0, y1, x0, x1 = max(0, y - radius), min(self.size, y + radius), max(0, x - radius), min(self.size, x + radius)
            yy, xx = np.ogrid[y0 - y : y1 - y, x0 - x : x1 - x]
            frame[y0:y1, x0:x1][yy * yy + xx * xx <= radius * radius] = color
        bar = self._steps * 7 % self.size  # a bar that moves along the top edge
        frame[4:12, bar : bar + 60] = (250, 250, 250)
        return frame

    def _observation(self) -> np.ndarray:
        return (self._positions / self.size).astype(np.float32)
