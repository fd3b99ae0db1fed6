"""The RLlib callback that wires recording into training: capture → encode → store → publish.

Holds:
  RecordingCallback   an ``RLlibCallback``. On eval runners it stamps each finished
                      episode's video with the weights version that acted and hands it
                      to the driver's inbox at once; it refuses recording envs on
                      training runners. On the driver it tells eval runners about each
                      round (the training iteration of their weights, for the labels;
                      saved scenarios to play), takes finished episodes as they arrive,
                      tags them with the training state of their weights and hands them
                      to the RecordingSession, which alone writes the video folder. After
                      a stop in the middle of a round (Ctrl-C, SIGTERM) it publishes what
                      reached the driver (``finish_interrupted_round``). In a Tune trial it
                      opens the trial's own session, and a SIGTERM of the trial process
                      stores what finished and finishes the wandb run with exit code 143
                      (a trial whose training raised: 1).
  callback_class()    a RecordingCallback bound to one driver session.
  TRAINING_RENDER_REFUSED  the sentence that refuses recording on training runners.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import functools
import logging
import re
import signal
import threading
import time

from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME, WEIGHTS_SEQ_NO

import ray

from eval_recorder.inbox import Inbox, deliver, find_inbox
from eval_recorder.session import RecordingSession, get_session, new_run_id
from eval_recorder.stopping import StopSignals, critical, exit_code_for
from eval_recorder.tags import WeightsHistory
from eval_recorder.wrapper import recording_wrapper, runner_round, set_runner_round

__all__ = [
    "RecordingCallback", "RoundState", "RunnerProblem", "TRAINING_RENDER_REFUSED", "bound_session_token",
    "callback_class", "is_recording_callback", "scenario_share", "trial_options",
]

logger = logging.getLogger(__name__)

# After a stop: how long to wait for the inbox (it may be going down with the whole job),
# and for a hand-over in progress (an episode that ended as the stop arrived).
STOP_COLLECT_SECONDS = 10.0
INBOX_TIMEOUT_SECONDS = 60.0  # longest wait for the inbox actor to answer a take
TRIAL_CLOSE_SECONDS = 30.0  # longest a signalled Tune trial waits for its session to close
STOP_IN_FLIGHT_SECONDS = 1.0

TRAINING_RENDER_REFUSED = (
    "render is set for the training env runners, but recording is evaluation-only; "
    "remove render from the training env config and set it in the evaluation config "
    "(evaluation.render=human)."
)


@dataclasses.dataclass(frozen=True)
class RunnerProblem:
    """An eval runner could not record (e.g. its env renders no frames): what and where."""

    message: str
    runner_index: int


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


# ---- state of an eval runner process (set by the driver through Ray) ----------------------


@dataclasses.dataclass(frozen=True)
class RoundState:
    """What the driver tells eval runners before a round (also kept in the inbox, where a
    runner restarted in the middle of a round finds it)."""

    evaluation_round: int | None
    history: WeightsHistory  # weights versions -> training iterations (for the labels)
    scenarios: list  # every saved scenario (name, bytes) of a round
    num_runners: int  # remote eval runners the round's scenarios are shared among


_RUNNER_INBOX = None  # the driver's inbox actor this process delivers finished episodes to
_RUNNER_STATE: RoundState | None = None
_REPORTED: set[int] = set()  # envs whose recording problem was already reported


def inbox_name(session_token: str | None) -> str | None:
    """The name of a session's inbox actor (None for a Tune trial's own session)."""
    return None if session_token is None else f"eval_recorder_inbox_{session_token}"


def prepare_runner(env_runner, inbox_actor, state: RoundState) -> None:
    """Runs on an eval runner (via Ray): where to deliver episodes, and this round's
    number, label iteration and share of the saved scenarios."""
    global _RUNNER_INBOX, _RUNNER_STATE
    _RUNNER_INBOX, _RUNNER_STATE = inbox_actor, state
    set_runner_round(state.evaluation_round, _label_iteration(env_runner),
                     scenario_share(state.scenarios, env_runner.worker_index, state.num_runners))


def _label_iteration(env_runner) -> int | None:
    """Training iteration of the weights the runner holds (RLlib stamps the version on
    every action), for the burned-in label."""
    version = getattr(env_runner, "_weights_seq_no", None)
    if version is None or _RUNNER_STATE is None:
        return None
    try:
        return _RUNNER_STATE.history.tag_for(version, env_steps_now=0).training_iteration
    except ValueError:
        return None


def scenario_share(scenarios: list, worker_index: int, num_runners: int) -> list:
    """The scenarios eval runner ``worker_index`` (1-based; 0 = the local runner) plays in a
    round: RLlib gives runner i of n ``k // n + (i <= k % n)`` of k episodes; runner i
    takes the next ones in order."""
    if not scenarios or worker_index == 0 or num_runners <= 1:
        return list(scenarios)
    count = len(scenarios)
    sizes = [count // num_runners + (i <= count % num_runners) for i in range(1, num_runners + 1)]
    start = sum(sizes[: worker_index - 1])
    return list(scenarios[start : start + sizes[worker_index - 1]])


def recording_envs(env_runner) -> list:
    """The recording wrappers of an env runner's envs (none on training runners)."""
    vector_env = getattr(env_runner, "env", None)
    if vector_env is None:
        return []
    wrappers = [recording_wrapper(env) for env in getattr(vector_env.unwrapped, "envs", [])]
    return [wrapper for wrapper in wrappers if wrapper is not None]


def probe_runner(env_runner) -> tuple[str | None, str | None]:
    """Runs on an eval runner: (problem, env label) of its first recording env, after
    one reset and one frame; (None, label) if it records, ("...", None) if it cannot."""
    wrappers = recording_envs(env_runner)
    if not wrappers:
        return "the evaluation env runners have no recording env (is render: human in their env config?)", None
    wrapper = wrappers[0]
    wrapper.reset()
    wrapper.recording.recorder.discard()
    return wrapper.recording.problem, wrapper.recording.label


class RecordingCallback(RLlibCallback):
    def __init__(self, session_token: str | None = None, options=None) -> None:
        super().__init__()
        self.session_token = session_token
        self.options = options
        self._own_session = None  # a Tune trial's own session (options without a folder)
        self._history = WeightsHistory()
        self._inbox: Inbox | None = None
        self._round_env_steps = 0
        self._watcher: threading.Thread | None = None
        self._stop_watching = threading.Event()
        self._taken = 0
        self._lock = threading.Lock()  # one publisher at a time (watcher thread or main thread)
        self._problems: set[str] = set()
        self._exit_code = 0  # a Tune trial's: 1 if its training raised, 143 after SIGTERM
        self._signals: StopSignals | None = None
        self._trial_closed = False

    def session(self) -> RecordingSession:
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
        if any(recording_wrapper(sub) is not None for sub in getattr(env.unwrapped, "envs", [])):
            raise ValueError(TRAINING_RENDER_REFUSED)

    @override(RLlibCallback)
    def on_episode_created(self, *, env_runner=None, **kwargs) -> None:
        """Fires on an env runner before each episode's reset: on an eval runner, makes sure
        it knows the round (a runner restarted in the middle of a round asks the inbox) and
        labels the episode with the training iteration of the weights it holds."""
        if env_runner is None or not env_runner.config.in_evaluation:
            return
        if _RUNNER_STATE is None and self.session_token is not None:
            actor = find_inbox(inbox_name(self.session_token))
            state = ray.get(actor.round_state.remote(), timeout=60) if actor is not None else None
            if state is not None:
                prepare_runner(env_runner, actor, state)
        runner_round().label_iteration = _label_iteration(env_runner)

    @override(RLlibCallback)
    def on_episode_end(self, *, episode, env_runner=None, env=None, env_index: int = 0, **kwargs) -> None:
        """Fires on an env runner when an episode ended: sends its video to the driver."""
        if env_runner is None or not env_runner.config.in_evaluation:
            return
        wrapper = recording_wrapper(env.unwrapped.envs[env_index])
        if wrapper is None:
            return
        if wrapper.recording.problem is not None and id(wrapper) not in _REPORTED and _RUNNER_INBOX is not None:
            _REPORTED.add(id(wrapper))
            deliver(_RUNNER_INBOX, RunnerProblem(wrapper.recording.problem, env_runner.worker_index))
        version = _weights_version(episode, env_runner)
        for finished in wrapper.pop_finished():
            finished = dataclasses.replace(
                finished, weights_seq_no=version, evaluation_round=runner_round().evaluation_round
            )
            if _RUNNER_INBOX is None:
                logger.error("no driver inbox is known on this eval runner; episode of %d steps is lost",
                             finished.episode_length)
            else:
                deliver(_RUNNER_INBOX, finished)

    # ---- on the driver ----------------------------------------------------------------

    @override(RLlibCallback)
    def on_algorithm_init(self, *, algorithm, **kwargs) -> None:
        """Fires on the driver when the Algorithm is built: checks that the eval runners
        can record, then opens the session (claims the folder, starts wandb)."""
        if self.session_token is None:
            self._own_session = RecordingSession(trial_options(self.options, algorithm))
            self._watch_trial(algorithm)
        session = self.session()
        if not session.is_open:
            _check_eval_runners_record(algorithm)
            session.open()
            if self._own_session is not None:
                # After wandb.init: atexit hooks run last-in first-out, and wandb's own
                # (which ends its service) must come after this one.
                atexit.register(self._close_own_session)
        self._inbox = session.inbox(name=inbox_name(self.session_token))
        self._record_start(algorithm)
        self._prepare_runners(algorithm, evaluation_round=None)

    def _watch_trial(self, algorithm) -> None:
        """A Tune trial's own session is closed by the trial: RLlib has no "algorithm
        stopped" callback; Tune stops a trial with Trainable.stop() -> cleanup() and may
        end the process right after, so the session closes there (atexit covers any other
        exit). Its exit code: 1 if a training step raised, 143 if the trial process got
        SIGTERM (what ``ray stop``, SLURM and Kubernetes send), else 0. (The atexit hook
        is registered once the session is open, see on_algorithm_init.)"""
        cleanup = algorithm.cleanup

        def noting_failure(method):
            def call(*args, **kwargs):
                try:
                    return method(*args, **kwargs)
                except Exception:
                    self._exit_code = 1
                    raise

            return call

        def cleanup_and_close() -> None:
            self._close_own_session()
            cleanup()

        # Trainable.train() runs step() (training, evaluation) and log_result() (the
        # on_train_result callbacks): a failure in either fails the trial.
        algorithm.step = noting_failure(algorithm.step)
        algorithm.log_result = noting_failure(algorithm.log_result)
        algorithm.cleanup = cleanup_and_close
        # The trial's process is a Ray worker: Ray's own SIGTERM handler ends it
        # (SystemExit), and Ray shuts down, killing the wandb service, before any atexit
        # hook runs. Ours closes the session first, never in the middle of storing a video.
        self._signals = StopSignals((signal.SIGTERM,), on_stop=self._trial_signalled).install()

    def _trial_signalled(self, signal_number: int) -> None:
        """Runs in the trial's main thread (outside any critical block), maybe inside a
        ray.get: the Ray calls of closing run in a thread of their own meanwhile."""
        self._exit_code = exit_code_for(signal_number)
        logger.warning("trial process got %s: storing the finished episodes, finishing the wandb run",
                       signal.Signals(signal_number).name)
        closer = threading.Thread(target=self._close_own_session, name="eval_recorder-trial-close", daemon=True)
        closer.start()
        closer.join(TRIAL_CLOSE_SECONDS)
        previous = self._signals.previous_handler(signal_number) if self._signals else None
        if callable(previous):
            previous(signal_number, None)
        raise SystemExit(self._exit_code)

    def _close_own_session(self) -> None:
        if self._own_session is None or self._trial_closed:
            return
        self._trial_closed = True
        self.finish_interrupted_round()
        self._own_session.close(exit_code=self._exit_code)

    @override(RLlibCallback)
    def on_checkpoint_loaded(self, *, algorithm, **kwargs) -> None:
        """Fires on the driver after a checkpoint was restored: training goes on from it."""
        self._record_start(algorithm)

    @override(RLlibCallback)
    def on_env_runners_recreated(self, *, algorithm, env_runner_group, env_runner_indices, is_evaluation,
                                 **kwargs) -> None:
        """Fires on the driver after RLlib restarted env runners (and synced their
        weights): a new eval runner learns the round, its label iteration and the inbox."""
        if not is_evaluation:
            return
        session = self.session()
        self._prepare_runners(algorithm, evaluation_round=session.evaluation_round or None,
                              indices=list(env_runner_indices))

    @override(RLlibCallback)
    def on_evaluate_start(self, *, algorithm, **kwargs) -> None:
        """Fires on the driver after the eval runners got the weights: starts a round,
        tells the runners about it, and publishes finished episodes as they arrive."""
        session = self.session()
        evaluation_round = session.begin_round()
        self._round_env_steps = _env_steps(algorithm)
        self._prepare_runners(algorithm, evaluation_round=evaluation_round)
        self._stop_watching.clear()
        self._watcher = threading.Thread(target=self._watch, name="eval_recorder-publisher", daemon=True)
        self._watcher.start()

    @override(RLlibCallback)
    def on_evaluate_end(self, *, algorithm, evaluation_metrics=None, **kwargs) -> None:
        """Fires on the driver after each evaluation round: publishes what is left and
        the round's summary (gallery, wandb metrics)."""
        self._stop_watcher()
        self.publish_finished()
        session = self.session()
        session.end_round()
        if session.round_episodes == 0:  # (episodes waiting for a full folder did arrive: said already)
            logger.warning("evaluation round %d ended without a recorded episode", session.evaluation_round)

    def publish_finished(self, *, timeout_seconds: float | None = None) -> int:
        """Take every episode that reached the inbox, tag, store and publish it; returns
        how many. (Also after Ctrl-C or SIGTERM: episodes finished on eval runners are
        already in the inbox.)"""
        if self._inbox is None:
            return 0
        # Taken episodes exist only here: a stop signal waits until they are stored.
        with critical():
            items = self._inbox.take(timeout_s=timeout_seconds or INBOX_TIMEOUT_SECONDS)
            with self._lock:
                return self._publish(items)

    def finish_interrupted_round(self, *, timeout_seconds: float = STOP_COLLECT_SECONDS,
                                 hurry: threading.Event | None = None) -> int:
        """After a stop (Ctrl-C, SIGTERM), also in the middle of an evaluation round: stop
        publishing as episodes arrive, publish every episode that reached the driver's
        inbox (waiting up to ``timeout_seconds`` for it, and ``STOP_IN_FLIGHT_SECONDS``
        for a hand-over in progress), then close the round (gallery, wandb means) if one
        was under way. Returns how many were published; never raises (the inbox may be
        gone with the whole job: what reached this process is stored)."""
        in_round = self._watcher is not None
        self._stop_watcher(timeout_seconds=2.0)
        published = 0
        deadline = time.monotonic() + timeout_seconds
        try:
            published += self.publish_finished(timeout_seconds=timeout_seconds)
            # Hand-overs in progress as the stop came (not episodes that end later on).
            in_flight_until = min(time.monotonic(), deadline) + STOP_IN_FLIGHT_SECONDS
            while self._inbox is not None and not (hurry is not None and hurry.is_set()):
                wait = min(in_flight_until, deadline) - time.monotonic()
                if wait <= 0 or self._inbox.wait(self._taken, timeout_s=wait) <= self._taken:
                    break
                published += self.publish_finished(timeout_seconds=max(deadline - time.monotonic(), 1.0))
        except Exception as error:
            logger.warning("could not collect the last finished episodes (%s: %s); %d were stored",
                           type(error).__name__, error, published)
        if in_round:
            try:
                self.session().end_round()
            except Exception as error:
                logger.warning("could not close the interrupted evaluation round: %s", error)
        return published

    def _watch(self) -> None:
        """The publisher thread of a round: publishes each episode as it arrives."""
        try:
            while not self._stop_watching.is_set():
                delivered = self._inbox.wait(self._taken, timeout_s=0.5)
                if delivered > self._taken:
                    items = self._inbox.take(timeout_s=INBOX_TIMEOUT_SECONDS)  # outside the lock: a stuck call blocks no one
                    with self._lock:
                        self._publish(items)
        except Exception as error:  # the main thread publishes what is left at the round's end
            if not self._stop_watching.is_set():
                logger.warning("publishing episodes as they finish stopped (%s: %s); the rest is published "
                               "when the round ends", type(error).__name__, error)

    def _stop_watcher(self, timeout_seconds: float = 30.0) -> None:
        self._stop_watching.set()
        if self._watcher is not None:
            self._watcher.join(timeout=timeout_seconds)
            self._watcher = None

    def _publish(self, items: list) -> int:
        published = 0
        session = self.session()
        for item in items:
            self._taken += 1
            if isinstance(item, RunnerProblem):
                if item.message not in self._problems:
                    self._problems.add(item.message)
                    logger.error("eval runner %d records no video: %s", item.runner_index, item.message)
                continue
            tag = self._history.tag_for(item.weights_seq_no, env_steps_now=self._round_env_steps)
            session.publish(item, tag)
            published += 1
        return published

    @override(RLlibCallback)
    def on_train_result(self, *, algorithm, result: dict, **kwargs) -> None:
        """Fires on the driver at the end of each train() call: remembers its weights."""
        iteration = result["training_iteration"]
        env_steps = int(result.get(ENV_RUNNER_RESULTS, {}).get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0))
        version = _learner_weights_version(algorithm)
        with critical(), self._lock:  # a stop waits: closing takes this lock too
            self._history.record(weights_seq_no=version, training_iteration=iteration, env_steps=env_steps)
            metrics = {"env_steps": env_steps}  # the sink adds training_iteration, the step metric
            train_return = result.get(ENV_RUNNER_RESULTS, {}).get("episode_return_mean")
            if train_return is not None:
                metrics["train/return_mean"] = float(train_return)
            self.session().log_training(metrics, step=iteration)

    def _record_start(self, algorithm) -> None:
        version, env_steps = _learner_weights_version(algorithm), _env_steps(algorithm)
        with critical(), self._lock:  # a stop waits: closing takes this lock too
            self._history.record(weights_seq_no=version, training_iteration=algorithm.iteration, env_steps=env_steps)

    def _prepare_runners(self, algorithm, *, evaluation_round, indices=None) -> None:
        group = algorithm.eval_env_runner_group
        if group is None or self._inbox is None:
            return
        actor = self._inbox.actor
        with critical(), self._lock:
            state = RoundState(evaluation_round, copy.deepcopy(self._history), self.session().scenarios(),
                               group.num_remote_workers())
        self._inbox.set_round(state)
        group.foreach_env_runner(
            lambda runner: prepare_runner(runner, actor, state),
            local_env_runner=indices is None,
            remote_worker_ids=indices,
        )


def _check_eval_runners_record(algorithm) -> None:
    """Before anything is claimed: the eval runners' envs must give frames (one reset and
    one frame on each eval runner's first env); else ValueError with their reason."""
    group = algorithm.eval_env_runner_group
    if group is None:
        raise ValueError("recording records evaluation episodes; set evaluation(evaluation_interval=N) first")
    for problem, _label in group.foreach_env_runner(probe_runner, local_env_runner=group.num_remote_workers() == 0):
        if problem is not None:
            raise ValueError(problem)


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


def _env_steps(algorithm) -> int:
    return int(algorithm.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0))


def _learner_weights_version(algorithm) -> int:
    """The learner's current weights version (RLlib's WEIGHTS_SEQ_NO)."""
    results = algorithm.learner_group.foreach_learner(lambda learner: learner.get_state(components=[])[WEIGHTS_SEQ_NO])
    return int(next(iter(results)).get())


def _weights_version(episode, env_runner) -> int:
    """The weights version that chose the actions of ``episode``: stamped on each action by
    most algorithms; else (DQN stamps none) the version the runner held, which does not
    change within an evaluation round (weights are synced before a round starts)."""
    versions = set()
    agent_episodes = getattr(episode, "agent_episodes", None)
    for single in (agent_episodes.values() if agent_episodes is not None else [episode]):
        try:
            stamped = single.get_extra_model_outputs(key=WEIGHTS_SEQ_NO)
        except (KeyError, IndexError, AttributeError):
            continue
        versions.update(int(v) for v in list(stamped))
    if len(versions) > 1:
        logger.warning("episode %s acted with several weights versions %s; tagging the newest",
                       episode.id_, sorted(versions))
    if versions:
        return max(versions)
    return int(getattr(env_runner, "_weights_seq_no", 0))
