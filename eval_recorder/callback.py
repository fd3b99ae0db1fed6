"""The RLlib callback that wires recording into training: capture → encode → store → publish.

Holds:
  RecordingCallback   an ``RLlibCallback``. On env runners it closes each recorded
                      evaluation episode's video (stamped with the weights version that
                      acted) and refuses recording envs on training runners. On the
                      driver it collects finished videos from the eval runners through
                      Ray, tags them with the training state of their weights, and hands
                      them to the RecordingSession, which alone writes the video folder.
  callback_class()    a RecordingCallback bound to one driver session.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import logging
import re

from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME, WEIGHTS_SEQ_NO

from eval_recorder.flatland.envs import RecordingRailEnv, collect_recorded, set_label_iteration
from eval_recorder.tags import WeightsHistory
from eval_recorder.session import RecordingSession, get_session, new_run_id

__all__ = [
    "RecordingCallback", "TRAINING_RENDER_REFUSED", "bound_session_token", "callback_class", "is_recording_callback",
    "trial_options",
]

logger = logging.getLogger(__name__)

TRAINING_RENDER_REFUSED = (
    "render is set for the training env runners, but recording is evaluation-only; "
    "remove render from the training env config and set it in the evaluation config "
    "(evaluation.render=human)."
)


def callback_class(*, session_token: str | None = None, options=None) -> functools.partial:
    """What RLlib instantiates per env runner and on the driver: a RecordingCallback bound
    to the driver session registered under ``session_token`` (an opaque id: it carries no
    path), or, for Tune trials, to ``options`` without a video folder: each trial's driver
    then opens its own session inside its trial folder. A ``partial`` of a module-level
    class, so configs and results pickle."""
    return functools.partial(RecordingCallback, session_token=session_token, options=options)


def bound_session_token(callbacks_class) -> str | None:
    """The session token of a ``callback_class()`` result, else None."""
    if is_recording_callback(callbacks_class):
        return callbacks_class.keywords.get("session_token")
    return None


def is_recording_callback(callbacks_class) -> bool:
    """True for a ``callback_class()`` result (or the RecordingCallback class itself)."""
    if isinstance(callbacks_class, functools.partial):
        return callbacks_class.func is RecordingCallback
    return isinstance(callbacks_class, type) and issubclass(callbacks_class, RecordingCallback)


class RecordingCallback(RLlibCallback):
    def __init__(self, session_token: str | None = None, options=None) -> None:
        super().__init__()
        self.session_token = session_token
        self.options = options
        self._own_session = None  # a Tune trial's own session (options without a folder)
        self._history = WeightsHistory()

    def session(self):
        """The driver session this callback publishes to."""
        if self.session_token is not None:
            return get_session(self.session_token)
        if self._own_session is None:
            raise RuntimeError("the recording session opens when the Algorithm starts (on_algorithm_init)")
        return self._own_session

    # ---- on env runners -------------------------------------------------------------

    @override(RLlibCallback)
    def on_environment_created(self, *, env_runner, env, **kwargs) -> None:
        """Fires on each env runner after it built its env: refuses recording in training."""
        if env_runner.config.in_evaluation:
            return
        if any(isinstance(sub.unwrapped, RecordingRailEnv) for sub in getattr(env.unwrapped, "envs", [])):
            raise ValueError(TRAINING_RENDER_REFUSED)

    @override(RLlibCallback)
    def on_episode_end(self, *, episode, env_runner=None, env=None, env_index: int = 0, **kwargs) -> None:
        """Fires on an env runner when an episode ended: closes that episode's video."""
        if env_runner is None or not env_runner.config.in_evaluation:
            return
        sub_env = env.unwrapped.envs[env_index].unwrapped
        if isinstance(sub_env, RecordingRailEnv):
            sub_env.finish_recording(
                weights_seq_no=_weights_version(episode), episode_return=float(episode.get_return())
            )

    # ---- on the driver ----------------------------------------------------------------

    @override(RLlibCallback)
    def on_algorithm_init(self, *, algorithm, **kwargs) -> None:
        """Fires on the driver when the Algorithm is built: opens the session."""
        if self.session_token is None:
            self._own_session = session = RecordingSession(trial_options(self.options, algorithm))
            # RLlib has no "algorithm stopped" callback; Tune stops a trial with
            # Trainable.stop() -> cleanup(), and may end the process right after: finish
            # the wandb run and release the folder there (atexit covers a plain exit).
            cleanup = algorithm.cleanup

            def cleanup_and_close() -> None:
                session.close()
                cleanup()

            algorithm.cleanup = cleanup_and_close
            atexit.register(session.close)
        self.session().open()
        self._record_start(algorithm)

    @override(RLlibCallback)
    def on_checkpoint_loaded(self, *, algorithm, **kwargs) -> None:
        """Fires on the driver after a checkpoint was restored: training goes on from it."""
        self._record_start(algorithm)

    @override(RLlibCallback)
    def on_evaluate_start(self, *, algorithm, **kwargs) -> None:
        """Fires on the driver after the eval runners got the weights: tells them which
        training iteration their weights are, for the burned-in labels."""
        group = algorithm.eval_env_runner_group
        if group is not None:
            history = self._history
            group.foreach_env_runner(lambda runner: set_label_iteration(runner, history), local_env_runner=True)

    @override(RLlibCallback)
    def on_evaluate_end(self, *, algorithm, evaluation_metrics=None, **kwargs) -> None:
        """Fires on the driver after each evaluation round: tags, stores, publishes."""
        if not self.publish_finished(algorithm):
            logger.warning("evaluation round ended without a recorded episode")

    def publish_finished(self, algorithm, *, timeout_seconds: float | None = None) -> int:
        """Collect the videos finished on the eval runners (through Ray), tag, store and
        publish them; returns how many. A runner that does not answer within
        ``timeout_seconds`` (None = wait) is skipped."""
        group = algorithm.eval_env_runner_group
        if group is None:
            return 0
        recorded = [
            episode
            for per_runner in group.foreach_env_runner(
                collect_recorded, local_env_runner=True, timeout_seconds=timeout_seconds
            )
            for episode in per_runner or []
        ]
        recorded.sort(key=lambda e: (e.runner_index, e.runner_sequence))
        env_steps_now = int(algorithm.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0))
        tagged = [(e, self._history.tag_for(e.weights_seq_no, env_steps_now=env_steps_now)) for e in recorded]
        return len(self.session().publish_round(tagged))

    @override(RLlibCallback)
    def on_train_result(self, *, algorithm, result: dict, **kwargs) -> None:
        """Fires on the driver at the end of each train() call: remembers its weights."""
        iteration = result["training_iteration"]
        env_steps = int(result.get(ENV_RUNNER_RESULTS, {}).get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0))
        self._history.record(
            weights_seq_no=_learner_weights_version(algorithm), training_iteration=iteration, env_steps=env_steps
        )
        metrics = {"env_steps": env_steps}  # the sink adds training_iteration, the step metric
        train_return = result.get(ENV_RUNNER_RESULTS, {}).get("episode_return_mean")
        if train_return is not None:
            metrics["train/return_mean"] = float(train_return)
        self.session().log_training(metrics, step=iteration)

    def _record_start(self, algorithm) -> None:
        env_steps = int(algorithm.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0))
        self._history.record(
            weights_seq_no=_learner_weights_version(algorithm),
            training_iteration=algorithm.iteration,
            env_steps=env_steps,
        )


def algorithm_folder(algorithm):
    """The folder an Algorithm's own outputs belong in: a Tune trial's directory when its
    storage is a local filesystem (what the user sees under storage_path), else the
    Algorithm's log folder (for remote storage: synced with SyncConfig(sync_artifacts=True))."""
    from pathlib import Path

    storage = getattr(algorithm, "_storage", None)
    if storage is not None and getattr(storage, "trial_dir_name", None):
        import pyarrow.fs

        if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
            return Path(storage.trial_fs_path)
    return Path(algorithm.logdir)


# Tune names a trial "<trainable>_<experiment tag>_<index>" (e.g. PPO_env_3d32c_00000) and
# its directory "<trial name>_<n>_<params>_<date>".
_TRIAL_DIR = re.compile(r"^(?P<name>.+?_(?P<id>[0-9a-f]{5}_\d{5}))(_|$)")


def trial_identity(algorithm) -> tuple[str | None, str | None]:
    """(trial id, trial name) of the Tune trial running ``algorithm``, else (None, None).
    RLlib drops Tune's trial info when it turns the config into an AlgorithmConfig, so
    Trainable.trial_id reads "default"; the trial directory still carries both."""
    if getattr(algorithm, "trial_id", "default") not in (None, "default"):
        return algorithm.trial_id, algorithm.trial_name
    storage = getattr(algorithm, "_storage", None)
    match = _TRIAL_DIR.match(getattr(storage, "trial_dir_name", None) or "")
    return (match["id"], match["name"]) if match else (None, None)


def trial_options(options, algorithm):
    """``options`` for this Algorithm's own folder: ``videos/`` in its trial folder (see
    algorithm_folder), the trial id as run id, the trial name as wandb run name."""
    logdir = algorithm_folder(algorithm)
    trial_id, trial_name = trial_identity(algorithm)
    run_id = re.sub(r"[^A-Za-z0-9_.-]", "_", trial_id)[:64] if trial_id else new_run_id()
    return dataclasses.replace(
        options,
        video_dir=str(logdir / "videos"),
        run_id=run_id,
        wandb_dir=str(logdir),
        wandb_name=trial_name or run_id,
    )


def _learner_weights_version(algorithm) -> int:
    """The learner's current weights version (RLlib's WEIGHTS_SEQ_NO)."""
    results = algorithm.learner_group.foreach_learner(lambda learner: learner.get_state(components=[])[WEIGHTS_SEQ_NO])
    return int(next(iter(results)).get())


def _weights_version(episode) -> int:
    """The weights version that chose the actions of ``episode`` (stamped per action)."""
    versions = set()
    for agent_episode in episode.agent_episodes.values():
        stamped = agent_episode.get_extra_model_outputs(key=WEIGHTS_SEQ_NO)
        versions.update(int(v) for v in list(stamped))
    if len(versions) > 1:
        logger.warning("episode %s acted with several weights versions %s; tagging the newest",
                       episode.id_, sorted(versions))
    return max(versions, default=0)
