"""Users' envs whose ``render()`` goes wrong, one way each (importable on every Ray worker:
the tests put tests/ on PYTHONPATH). Used through env.factory and add_recording.

``make(env_config)`` makes a ``Faulty`` env: ``faults`` lists, per episode of the env
instance (1st, 2nd ...: its resets), ``ok`` or one of FAULTS; in a faulty episode the
``step``-th frame and the later ones go wrong (``step`` 0: at the reset, i.e. at start).
``delay``: seconds each render() takes (episodes long enough to be hit in their middle).
"""

from __future__ import annotations

import time

import numpy as np

from support.user_envs import Blocks

FAULTS = ("raises", "none", "shape", "float")


def make(env_config=None):
    config = dict(env_config or {})
    faults = config.get("faults")
    if faults is None:
        faults = [config.get("fault", "ok")]
    return Faulty(faults=list(faults), step=int(config.get("step", 0)), size=int(config.get("size", 64)),
                  delay=float(config.get("delay", 0.0)))


class Faulty(Blocks):
    """Blocks whose render() fails as ``faults`` says (see the module docstring)."""

    def __init__(self, faults, step=0, size=64, delay=0.0):
        super().__init__(size=size)
        self.faults, self.fault_step, self.delay = faults, step, delay
        self.episodes, self.renders = 0, 0

    def reset(self, *, seed=None, options=None):
        self.episodes += 1
        self.renders = 0
        return super().reset(seed=seed, options=options)

    def render(self):
        if self.delay:
            time.sleep(self.delay)
        frame = super().render()
        call, self.renders = self.renders, self.renders + 1
        fault = self.faults[self.episodes - 1] if self.episodes <= len(self.faults) else "ok"
        if fault == "ok" or call < self.fault_step:
            return frame
        if fault == "raises":  # as RLlib's ParallelPettingZooEnv.render() does with PettingZoo >= 1.22
            raise TypeError("render() takes 1 positional argument but 2 were given")
        if fault == "none":
            return None
        if fault == "float":
            return frame.astype(np.float32) / 255.0
        if fault == "shape" and call > self.fault_step:  # the frame after the first faulty one is larger
            return np.zeros((self.size + 16, self.size + 16, 3), np.uint8)
        return frame
