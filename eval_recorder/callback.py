"""The RLlib callback that wires recording into an Algorithm: thin hooks, each handing over
to the room of the process it fires in.

On env runners: ``eval_recorder.eval_runner`` (refuse recording in training, learn the
round, deliver finished episodes). On the driver: the session (``eval_recorder.session``)
and its ``RoundPublisher`` (``eval_recorder.publisher``); in a Tune trial, the trial's own
session (``eval_recorder.trial``). ``callback_class()`` is what ``add_recording`` puts in
the config: a ``partial`` of a module-level class, so configs and results pickle; it
carries an opaque token by which the driver process's one registry finds the session.
"""

from __future__ import annotations

import functools
import uuid

from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.utils.annotations import override

from eval_recorder import eval_runner
from eval_recorder.publisher import check_eval_runners_record

__all__ = ["RecordingCallback", "bound_session", "callback_class", "is_recording_callback"]

_SESSIONS: dict = {}  # token -> RecordingSession: the driver process's sessions


def callback_class(*, session=None, options=None) -> functools.partial:
    """What RLlib instantiates per env runner and on the driver: a RecordingCallback bound
    to the driver ``session`` (by an opaque token: it carries no path), or, for Tune
    trials, to ``options`` without a video folder: each trial's driver then opens its own
    session inside its trial folder."""
    token = None
    if session is not None:
        token = uuid.uuid4().hex
        _SESSIONS[token] = session
    return functools.partial(RecordingCallback, session_token=token, options=options)


def bound_session(callbacks_class):
    """The session a ``callback_class()`` result is bound to, else None."""
    if is_recording_callback(callbacks_class) and callbacks_class.keywords.get("session_token"):
        return _session(callbacks_class.keywords["session_token"])
    return None


def _session(token: str):
    try:
        return _SESSIONS[token]
    except KeyError:
        raise RuntimeError(
            "this recording callback runs in a process other than the one that called add_recording(); "
            "build the Algorithm in the process that configured recording"
        ) from None


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
        self._publisher = None  # on the driver, once the Algorithm started

    # ---- on env runners -------------------------------------------------------------

    @override(RLlibCallback)
    def on_environment_created(self, *, env_runner, env, **kwargs) -> None:
        """Fires on each env runner after it built its env: refuses recording in training."""
        eval_runner.refuse_recording_in_training(env_runner, env)

    @override(RLlibCallback)
    def on_episode_created(self, *, env_runner=None, **kwargs) -> None:
        """Fires on an env runner before each episode's reset: on an eval runner, makes sure
        it knows the round and labels the episode with the iteration of its weights."""
        if env_runner is not None and env_runner.config.in_evaluation:
            eval_runner.know_the_round(env_runner, self.session_token)

    @override(RLlibCallback)
    def on_episode_end(self, *, episode, env_runner=None, env=None, env_index: int = 0, **kwargs) -> None:
        """Fires on an env runner when an episode ended: sends its video to the driver."""
        if env_runner is not None and env_runner.config.in_evaluation:
            eval_runner.deliver_finished(episode, env_runner, env, env_index)

    @override(RLlibCallback)
    def on_episode_step(self, *, env_runner=None, env=None, env_index: int = 0, **kwargs) -> None:
        """Fires on an env runner after every env step: on an eval runner, sends a video the
        encoder helper finished since (one drawn beside the env is finished after its episode)."""
        if env_runner is not None and env_runner.config.in_evaluation:
            eval_runner.deliver_done(env, env_index)

    @override(RLlibCallback)
    def on_sample_end(self, *, env_runner=None, **kwargs) -> None:
        """Fires on an env runner at the end of each ``sample()``: on an eval runner, sends the
        videos still being drawn (beside the env) once they are done."""
        if env_runner is not None and env_runner.config.in_evaluation:
            eval_runner.deliver_drawn(env_runner)

    # ---- on the driver ----------------------------------------------------------------

    @override(RLlibCallback)
    def on_algorithm_init(self, *, algorithm, **kwargs) -> None:
        """Fires on the driver when the Algorithm is built: checks that the eval runners
        can record, then opens the session (claims the folder, starts wandb)."""
        trial = None
        if self.session_token is None:
            from eval_recorder.trial import TrialSession

            trial = TrialSession(self.options, algorithm)
            session = trial.session
        else:
            session = _session(self.session_token)
        if not session.is_open:
            check_eval_runners_record(algorithm)
            session.open()
            if trial is not None:
                trial.opened()
        self._publisher = session.attach(algorithm, session_token=self.session_token)
        self._publisher.started()

    @override(RLlibCallback)
    def on_checkpoint_loaded(self, *, algorithm, **kwargs) -> None:
        """Fires on the driver after a checkpoint was restored: training goes on from it."""
        self._publisher.note_weights()

    @override(RLlibCallback)
    def on_env_runners_recreated(self, *, algorithm, env_runner_group, env_runner_indices, is_evaluation,
                                 **kwargs) -> None:
        """Fires on the driver after RLlib restarted env runners (and synced their
        weights): a new eval runner learns the round, its label iteration and the inbox."""
        if is_evaluation:
            self._publisher.runners_recreated(list(env_runner_indices))

    @override(RLlibCallback)
    def on_evaluate_start(self, *, algorithm, **kwargs) -> None:
        """Fires on the driver after the eval runners got the weights: starts a round and
        publishes finished episodes as they arrive."""
        self._publisher.begin_round()

    @override(RLlibCallback)
    def on_evaluate_end(self, *, algorithm, evaluation_metrics=None, **kwargs) -> None:
        """Fires on the driver after each evaluation round: publishes what is left and
        the round's summary (gallery, wandb metrics)."""
        self._publisher.end_round()

    @override(RLlibCallback)
    def on_train_result(self, *, algorithm, result: dict, **kwargs) -> None:
        """Fires on the driver at the end of each train() call: remembers its weights."""
        self._publisher.trained(result)
