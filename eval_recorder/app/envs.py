"""Which env the main job and standalone evaluation use, and the check that it works.

The env is the built-in Flatland preset, ``env.id`` (a registered name or gymnasium id),
``env.factory`` (``module:function``) or, for a checkpoint, the one it was trained on;
``env.setup`` runs here and on every Ray worker. Before anything is claimed the driver
builds the evaluation env once, within ``env.build_timeout``, and checks that it fits each
policy of a checkpoint; every failure is one sentence (UserError).
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from eval_recorder.app.checkpoints import CheckpointInfo
from eval_recorder.errors import UserError

__all__ = [
    "EnvChoice",
    "EnvFacts",
    "FactoryCreator",
    "builtin_env_config",
    "check_fits",
    "checkpoint_env_choice",
    "env_choice",
    "hook_path",
    "probe_env",
    "run_setup",
]

_FACTORY_PREFIX = "eval_recorder_factory:"


@dataclass(frozen=True)
class EnvChoice:
    specifier: Any  # what AlgorithmConfig.environment() takes: a registered name, a gymnasium id or a class
    env_config: dict[str, Any]
    description: str  # e.g. "the built-in Flatland env (small)", "env 'CartPole-v1'"


def _import(target: str, option: str) -> Callable:
    """The function named ``module:function`` (``option`` names the setting, for messages)."""
    module_name, sep, name = target.partition(":")
    if not sep or not module_name or not name:
        raise UserError(f"{option}={target} is not of the form module:function; write e.g. {option}=my_pkg.envs:make_env.")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise UserError(
            f"{option}={target}: module {module_name} cannot be imported ({type(error).__name__}: "
            f"{_first_line(error)}); make it importable (e.g. on PYTHONPATH) on the driver and on every Ray worker."
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"{option}={target}: module {module_name} has no function {name}; name an existing function.")
    return function


def hook_path(target: str) -> str:
    """``module:function`` as Ray's ``worker_process_setup_hook`` takes it (``module.function``)."""
    module_name, _, name = target.partition(":")
    return f"{module_name}.{name}"


def run_setup(target: str | None) -> None:
    """Call ``env.setup`` here (the driver); Ray calls it on every worker."""
    if not target:
        return
    function = _import(target, "env.setup")
    try:
        function()
    except Exception as error:
        raise UserError(f"env.setup={target} failed ({type(error).__name__}: {_first_line(error)}); fix it.") from None


class FactoryCreator:
    """An env creator calling ``module:function`` with the env config (imported where it runs)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __call__(self, env_context):
        return _import(self.target, "env.factory")(env_context)


def env_choice(cfg, *, seed: int) -> EnvChoice:
    """The env of ``cfg.env``: ``env.factory``, else ``env.id``, else the built-in Flatland preset."""
    env = cfg.env
    if env.factory:
        from ray.tune.registry import register_env

        _import(env.factory, "env.factory")  # a bad name is refused here, not on a worker
        name = f"{_FACTORY_PREFIX}{env.factory}"
        register_env(name, FactoryCreator(env.factory))
        return EnvChoice(name, dict(env.config), f"env.factory={env.factory}")
    if env.id:
        return EnvChoice(env.id, dict(env.config), f"env {env.id!r}")
    from eval_recorder.flatland.envs import ENV_NAME, register_env

    register_env()
    return EnvChoice(ENV_NAME, builtin_env_config(env, seed=seed), f"the built-in Flatland env ({env.name})")


def builtin_env_config(env_cfg, *, seed: int) -> dict[str, Any]:
    """RLlib env_config for ``eval_recorder.flatland.envs.make_env`` from an env preset."""
    from eval_recorder.flatland.envs import ENV_CONFIG_KEYS

    config = {key: env_cfg[key] for key in ENV_CONFIG_KEYS if key != "seed"}
    config["seed"] = seed
    return config


def checkpoint_env_choice(info: CheckpointInfo) -> EnvChoice:
    """The env ``info``'s checkpoint was trained on; refused if it is not known here."""
    from ray.tune.registry import ENV_CREATOR, _global_registry

    from eval_recorder.flatland.envs import ENV_NAME, register_env

    specifier = info.config.get("env")
    if specifier == ENV_NAME:
        register_env()
    known = (
        not isinstance(specifier, str)
        or _global_registry.contains(ENV_CREATOR, specifier)
        or "." in specifier
        or _gymnasium_knows(specifier)
    )
    if specifier is None or not known:
        raise UserError(
            f"checkpoint {info.path} was trained on env {specifier!r}, which is not known here; register it with "
            f"env.setup=module:function (called on the driver and on every Ray worker), or give "
            f"env.factory=module:function."
        )
    name = specifier if isinstance(specifier, str) else getattr(specifier, "__name__", str(specifier))
    return EnvChoice(specifier, dict(info.config.get("env_config") or {}), f"env {name!r}")


def _gymnasium_knows(env_id: str) -> bool:
    import gymnasium as gym

    try:
        gym.spec(env_id)
        return True
    except Exception:
        return False


@dataclass(frozen=True)
class EnvFacts:
    multi_agent: bool
    spaces: dict[Any, tuple[Any, Any]]  # agent id (None for a single-agent env) -> (observation, action) space
    label: str  # the env label file names start with
    flatland: bool
    scenarios: list[str] = field(default_factory=list)


def probe_env(choice: EnvChoice, *, max_side: int, seed: int, scenarios: list[tuple[str, bytes]],
              timeout_s: float) -> EnvFacts:
    """Build the evaluation env as an eval runner would, reset it, take a frame (and play
    the reset of each saved scenario), all within ``timeout_s``; its facts, or UserError."""
    outcome: dict[str, Any] = {}

    def build() -> None:
        try:
            outcome["facts"] = _probe(choice, max_side=max_side, seed=seed, scenarios=scenarios)
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=build, name="eval_recorder-env-check", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise UserError(
            f"{choice.description} was not built and reset within {timeout_s:g} s (env.build_timeout); check its "
            f"settings (a grid too small for its trains never finishes), or raise env.build_timeout."
        )
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, UserError):
            raise error
        raise UserError(
            f"{choice.description} cannot be built and reset ({type(error).__name__}: {_first_line(error)}); "
            f"check the env settings."
        ) from None
    return outcome["facts"]


def _probe(choice: EnvChoice, *, max_side: int, seed: int, scenarios: list[tuple[str, bytes]]) -> EnvFacts:
    import gymnasium as gym
    from ray.rllib.env.env_context import EnvContext

    from eval_recorder.errors import NoFrames
    from eval_recorder.eval_env import RECORDING_KEY, RENDER_KEY, RecordingEnvCreator

    context = EnvContext({**choice.env_config, RENDER_KEY: "human", RECORDING_KEY: {"max_side": max_side,
                                                                                   "overlay": False}},
                         worker_index=0)
    try:
        env = RecordingEnvCreator(choice.specifier)(context)
    except NoFrames as error:
        raise UserError(str(error)) from None
    except gym.error.Error as error:
        raise UserError(
            f"{choice.description} cannot be made ({_first_line(error)}); register it with env.setup=module:function "
            f"or give env.factory=module:function."
        ) from None
    try:
        _no_problem(env.probe(seed=seed))
        played = []
        for name, data in scenarios:
            if not env.plays_scenarios:
                raise UserError(
                    f"env.scenarios holds saved Flatland scenarios, but {choice.description} is not a Flatland env; "
                    f"drop env.scenarios or use a Flatland env."
                )
            try:
                problem = env.probe(seed=seed, scenario=(name, data))
            except Exception as error:
                raise UserError(
                    f"saved scenario {name} cannot be played ({type(error).__name__}: {_first_line(error)}); "
                    f"remove it from env.scenarios or save it again with flatland's RailEnvPersister."
                ) from None
            _no_problem(problem)
            played.append(name)
        from ray.rllib.env.multi_agent_env import MultiAgentEnv

        multi_agent = isinstance(env, MultiAgentEnv)
        if multi_agent:
            # flatland-rl's RayMultiAgentWrapper leaves possible_agents empty; its agents are set
            agents = list(env.possible_agents or env.agents)
            spaces = {agent: (env.get_observation_space(agent), env.get_action_space(agent)) for agent in agents}
        else:
            spaces = {None: (env.observation_space, env.action_space)}
        from eval_recorder.flatland.frames import FlatlandFrames

        return EnvFacts(multi_agent=multi_agent, spaces=spaces, label=env.label,
                        flatland=isinstance(env.frame_source, FlatlandFrames), scenarios=played)
    finally:
        env.close()


def _no_problem(problem: str | None) -> None:
    if problem is not None:
        raise UserError(problem)


def check_fits(facts: EnvFacts, info: CheckpointInfo, choice: EnvChoice) -> None:
    """The env must give each policy of the checkpoint the spaces it was trained on (the
    checkpoint's own policy mapping says which agent each policy plays)."""
    if info.config.get("_env_to_module_connector") is not None:
        return  # a custom env-to-module connector may change observations; RLlib checks them itself
    mapping = info.config.get("policy_mapping_fn")
    for agent, (observation_space, action_space) in facts.spaces.items():
        module = _module_of(agent, info, mapping)
        if module is None:
            continue
        policy_observations, policy_actions = info.modules[module]
        if observation_space != policy_observations or action_space != policy_actions:
            who = "" if agent is None else f" for agent {agent} (policy {module})"
            raise UserError(
                f"the env does not fit the policy of checkpoint {info.path}{who}: {choice.description} gives "
                f"observations {observation_space} and actions {action_space}, the policy takes "
                f"{policy_observations} and {policy_actions}; choose an env like the one it was trained on."
            )


def _module_of(agent, info: CheckpointInfo, mapping) -> str | None:
    if agent is None:
        return "default_policy" if "default_policy" in info.modules else next(iter(info.modules))
    try:
        module = mapping(agent, None) if mapping is not None else None
    except Exception:
        module = None
    if module in info.modules:
        return module
    return next(iter(info.modules)) if len(info.modules) == 1 else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0].rstrip(".")
