"""The evaluation env of a recorded RLlib config: the user's env, made as RLlib makes it,
inside the recording wrapper.

``RecordingEnvCreator`` is what eval runners call to make their envs: it strips ``render``
and the recording settings (``RECORDING_KEY``) from the env config, makes the user's env
exactly as RLlib would (a registered name, a gymnasium id — made with
``render_mode="rgb_array"`` —, an env class or a ``module.Class`` path) and wraps it for
recording, loaded with the saved scenario of most agents when evaluation plays scenarios
(RLlib fixes a runner's agent ids when it makes the env).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from eval_recorder.frames import DEFAULT_MAX_SIDE
from eval_recorder.naming import env_label
from eval_recorder.wrapper import record_episodes

__all__ = ["HEADLESS_SDL", "RECORDING_KEY", "RENDER_KEY", "RecordingEnvCreator", "describe_env", "headless_sdl", "make_user_env"]

RECORDING_KEY = "eval_recorder"
RENDER_KEY = "render"


def describe_env(env_specifier: Any) -> str:
    """``"CartPole-v1"``, ``"flatland_env"``, ``"MyEnv"``: how an env specifier is named."""
    if isinstance(env_specifier, str):
        return env_specifier
    return getattr(env_specifier, "__name__", type(env_specifier).__name__)


def _is_gymnasium_id(env_specifier: Any) -> bool:
    from ray.tune.registry import ENV_CREATOR, _global_registry

    return (
        isinstance(env_specifier, str)
        and not _global_registry.contains(ENV_CREATOR, env_specifier)
        and "." not in env_specifier
    )


# Recorded envs draw off-screen: SDL (pygame, which gymnasium's classic-control and box2d
# envs draw with) must not look for a display or a sound card, which eval runners lack
# (SDL's XDG_RUNTIME_DIR and ALSA errors otherwise). A value the user set stays.
HEADLESS_SDL = {"SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy", "PYGAME_HIDE_SUPPORT_PROMPT": "1"}


def headless_sdl() -> None:
    """Make SDL in this process draw off-screen with no sound device (before pygame starts)."""
    import os

    for name, value in HEADLESS_SDL.items():
        os.environ.setdefault(name, value)


def make_user_env(env_specifier: Any, env_context: Any):
    """The env RLlib would make for ``env_specifier`` with ``env_context``; a gymnasium id
    is made with ``render_mode="rgb_array"`` (unless the config names a render mode).
    SDL is made headless first (``headless_sdl``)."""
    headless_sdl()
    if _is_gymnasium_id(env_specifier):
        return gym.make(env_specifier, **{"render_mode": "rgb_array", **dict(env_context)})
    from ray.rllib.algorithms.algorithm import Algorithm

    _, creator = Algorithm._get_env_id_and_creator(env_specifier, {"remote_worker_envs": False})
    return creator(env_context)


class RecordingEnvCreator:
    """What eval runners call to make their envs (registered under a name of its own)."""

    def __init__(self, env_specifier: Any) -> None:
        self.env_specifier = env_specifier
        self.label = env_label(describe_env(env_specifier))

    def __call__(self, env_context):
        from ray.rllib.env.env_context import EnvContext

        settings = dict(env_context.get(RECORDING_KEY) or {})
        user_config = {key: value for key, value in dict(env_context).items() if key not in (RECORDING_KEY, RENDER_KEY)}
        if isinstance(env_context, EnvContext):
            user_context = env_context.copy_with_overrides(env_config=user_config)
        else:
            user_context = EnvContext(user_config, worker_index=0)
        env = make_user_env(self.env_specifier, user_context)
        recording = record_episodes(
            env,
            fps=settings.get("fps", 10),
            max_side=settings.get("max_side", DEFAULT_MAX_SIDE),
            frame_every=settings.get("frame_every", 1),
            overlay=settings.get("overlay", True),
            label=self.label,
            runner_index=getattr(env_context, "worker_index", 0),
        )
        if settings.get("spaces_scenario") is not None:
            recording.load_scenario(*settings["spaces_scenario"])  # every scenario's agent ids fit the runner
        return recording
