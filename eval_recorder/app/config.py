"""The configuration schema of ``run_eval.py``: Hydra structured configs.

One dataclass per config group or section, each field documented where it is declared
(``options_doc`` turns those docs into ``--help`` and the README's table), registered in
Hydra's ConfigStore by ``register_configs()``. YAML files in ``conf/`` only choose and
override; a wrong type or an unknown key fails with Hydra's own message before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from eval_recorder.frames import DEFAULT_MAX_SIDE

__all__ = [
    "AlgorithmSection",
    "EnvConfig",
    "EvaluationConfig",
    "MainConfig",
    "RayConfig",
    "RecordingConfig",
    "TrainingConfig",
    "WandbConfig",
    "WandbMode",
    "register_configs",
]


class WandbMode(str, Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


@dataclass
class EnvConfig:
    """The env: a built-in Flatland preset (``flatland.env_generation.env_generator``), or yours."""

    name: str = MISSING
    """Name of this env preset (small, medium)."""
    id: Optional[str] = None
    """Your env instead of the built-in one: a registered env name (see env.setup) or a gymnasium id such as CartPole-v1."""
    factory: Optional[str] = None
    """Your env made by a function, module:function (e.g. my_pkg.envs:make_env), called with env.config."""
    setup: Optional[str] = None
    """module:function called first on the driver and on every Ray worker, e.g. to register your env (my_pkg.envs:register)."""
    config: dict[str, Any] = field(default_factory=dict)
    """env_config of your env (env.id, env.factory): +env.config.key=value."""
    scenarios: Optional[str] = None
    """Folder of saved Flatland scenarios (RailEnvPersister .pkl/.mpk files): each evaluation plays each once, one video each."""
    build_timeout: float = 120.0
    """Seconds the env may take to be built, reset and drawn once on the driver, before anything starts."""
    n_agents: int = 2
    """Number of trains."""
    x_dim: int = 30
    """Grid width in cells."""
    y_dim: int = 30
    """Grid height in cells."""
    n_cities: int = 2
    """Cities (stations) the rail generator tries to place."""
    max_rail_pairs_in_city: int = 2
    """Parallel track pairs in a city."""
    max_rails_between_cities: int = 2
    """Rails connecting two cities."""
    malfunction_interval: int = 0
    """Mean steps between train malfunctions; 0 = no malfunctions."""
    tree_depth: int = 2
    """Depth of the tree observation."""
    predictor_depth: int = 10
    """Steps the shortest-path predictor looks ahead."""
    render: Optional[str] = None
    """Render mode of the TRAINING env runners: must stay null (recording is evaluation-only; use evaluation.render)."""


@dataclass
class AlgorithmSection:
    """The RLlib algorithm (new API stack) and its settings; pick one with algorithm=ppo|appo|impala|dqn."""

    name: str = MISSING
    """Algorithm of this preset: PPO, APPO, IMPALA or DQN."""
    train_batch_size: int = 400
    """Env steps per learner update (for DQN: sampled per training iteration)."""
    lr: float = 3e-4
    """Learning rate."""
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer sizes of the policy network (one policy shared by all agents of a multi-agent env)."""
    minibatch_size: int = 128
    """PPO: SGD minibatch size."""
    num_epochs: int = 2
    """PPO: passes over each training batch."""
    replay_capacity: int = 50000
    """DQN: replay buffer capacity in env steps."""
    learning_starts: int = 200
    """DQN: env steps sampled before learning starts."""


@dataclass
class TrainingConfig:
    """Training."""

    iterations: int = 3
    """Train until this many iterations (train() calls) are done; a resumed run continues up to it."""
    num_env_runners: int = 0
    """Remote training env runners (0 = sample in the driver)."""
    seed: int = 0
    """Seed of training (env generation and sampling)."""
    checkpoint_every: int = 0
    """Save a checkpoint every N iterations (0 = only at the end; the last one is always saved)."""


@dataclass
class EvaluationConfig:
    """Periodic (or standalone) evaluation; only evaluation episodes are recorded."""

    interval: int = 1
    """Evaluate every N training iterations."""
    episodes: int = 2
    """Recorded episodes per evaluation round."""
    parallel_to_training: bool = False
    """Evaluate while the next iteration trains (videos then show the previous iteration's weights)."""
    num_env_runners: int = 1
    """Remote evaluation env runners (0 = evaluate in the driver process)."""
    seed: int = 1000
    """Seed of the evaluation episodes (same seed, same episodes)."""
    explore: bool = False
    """Sample actions (true) instead of acting greedily (false)."""
    render: Optional[str] = "human"
    """Record evaluation episodes: human = render off-screen frames into videos; null = no recording."""
    runner_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each eval runner needs: +evaluation.runner_resources={eval_node:1} pins eval runners to nodes offering eval_node."""


@dataclass
class RecordingConfig:
    """Where and how videos are written."""

    video_dir: str = "${hydra:runtime.output_dir}/videos"
    """Folder for videos, sidecars and manifest (default: inside this run's Hydra output folder)."""
    fps: int = 10
    """Frames per second of the videos."""
    max_side: int = DEFAULT_MAX_SIDE
    """Longest frame side in pixels: larger frames are scaled down (0 = flatland's own size, uncapped)."""
    frame_every: int = 1
    """Record every k-th env step (plus the reset frame and the last step); k > 1 gives shorter, cheaper videos."""
    overlay: bool = True
    """Burn a small label into each frame: training iteration, env step of the episode, agents arrived / total."""
    select: str = "all"
    """Which episodes of a round become videos, chosen when the round ends: all, or e.g. worst:1,best:1 (also failed:N, first:N; worst/best by completion, then return); every episode keeps its replay record."""
    resume: bool = False
    """Continue the run wandb.run_id in its own video folder (appends, never overwrites)."""


@dataclass
class WandbConfig:
    """Weights & Biases publishing."""

    mode: WandbMode = WandbMode.offline
    """offline (default: no account or network; upload later with wandb sync) | online | disabled."""
    project: str = "eval_recorder"
    """wandb project."""
    entity: Optional[str] = None
    """wandb entity (team or user); null = your default."""
    run_id: Optional[str] = None
    """Run id (wandb id, folder owner, part of file names); null = a new one."""


@dataclass
class MlflowConfig:
    """MLflow publishing (with mlflow in trackers; needs `pip install -e '.[mlflow]'`)."""

    tracking_uri: Optional[str] = None
    """MLflow tracking server (e.g. http://host:5000); null = a local MLflow store in this run's folder, no server."""
    experiment: str = "eval_recorder"
    """MLflow experiment the run is logged to."""


@dataclass
class RayConfig:
    """The Ray runtime."""

    address: Optional[str] = None
    """null = start a local Ray; auto (on a cluster node) or host:6379 (the head's address) = join that running Ray cluster."""
    num_cpus: int = 2
    """CPUs the local Ray may use (ignored when joining a cluster)."""


@dataclass
class MainConfig:
    """Everything ``run_eval.py`` takes (conf/config.yaml picks the defaults)."""

    checkpoint: Optional[str] = None
    """Evaluate this saved RLlib checkpoint (or every checkpoint in this run folder) instead of training."""
    render: Optional[str] = None
    """Render stored episodes into videos instead of training: a video folder (its episodes without a video) or one episode's replay record in it; recording.fps, max_side, overlay and frame_every apply."""
    verbose: bool = False
    """Also show Ray's, RLlib's and wandb's own output on the console (by default it goes only to run_eval.log in the run folder)."""
    trackers: list[str] = field(default_factory=lambda: ["wandb"])
    """Where videos and metrics are published beside the video folder: any of wandb, tensorboard, mlflow (e.g. trackers=[tensorboard,mlflow]; [] for none)."""
    env: EnvConfig = MISSING
    algorithm: AlgorithmSection = MISSING
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (``conf/`` YAML files build on it)."""
    store = ConfigStore.instance()
    store.store(name="base_config", node=MainConfig)
