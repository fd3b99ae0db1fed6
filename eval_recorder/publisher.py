"""What the driver does with an Algorithm's evaluation rounds: tell the eval runners about
each round, take finished episodes from the inbox as they arrive, tag each with the
training state whose weights acted, and hand it to the session, which alone writes the
video folder.

``RoundPublisher`` is made by ``RecordingSession.attach(algorithm)`` when the Algorithm
starts; the RLlib callback's driver hooks call it. During a round a publisher thread
stores episodes as they arrive; after a stop in the middle of a round (Ctrl-C, SIGTERM)
``finish_interrupted_round`` stores what reached the driver.
"""

from __future__ import annotations

import copy
import logging
import threading
import time

from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME, WEIGHTS_SEQ_NO

from eval_recorder.errors import RunnerRefused
from eval_recorder.eval_runner import RunnerProblem, inbox_name, prepare_runner, probe_runner
from eval_recorder.recorder import DroppedEpisode
from eval_recorder.runner_round import RunnerRound
from eval_recorder.stopping import critical
from eval_recorder.tags import WeightsHistory

__all__ = ["RUNNER_CHECK_SECONDS", "RoundPublisher", "check_eval_runners_record", "dropped_message"]

logger = logging.getLogger(__name__)

# After a stop: how long to wait for the inbox (it may be going down with the whole job),
# and for a hand-over in progress (an episode that ended as the stop arrived).
STOP_COLLECT_SECONDS = 10.0
STOP_IN_FLIGHT_SECONDS = 1.0
INBOX_TIMEOUT_SECONDS = 60.0  # longest wait for the inbox actor to answer a take
# Longest wait for every eval runner to answer the recording check: one reset of its env,
# its first frames drawn (Flatland's first picture of a large grid takes seconds) and
# encoded, on a loaded machine.
RUNNER_CHECK_SECONDS = 300.0


def check_eval_runners_record(algorithm) -> None:
    """Before anything is claimed: every eval runner must answer (within
    ``RUNNER_CHECK_SECONDS``) that it can record: its scratch folder takes a file and gives
    it back, its first env resets and gives frames; else RunnerRefused with the reason."""
    group = algorithm.eval_env_runner_group
    if group is None:
        raise ValueError("recording records evaluation episodes; set evaluation(evaluation_interval=N) first")
    remote = group.num_remote_workers()
    answers = group.foreach_env_runner(probe_runner, local_env_runner=remote == 0, healthy_only=False,
                                       timeout_seconds=RUNNER_CHECK_SECONDS if remote else None)
    for problem, _label, _index in answers:
        if problem is not None:
            raise RunnerRefused(problem)
    expected = max(remote, 1)
    if len(answers) < expected:
        heard = sorted(index for _problem, _label, index in answers)
        raise RunnerRefused(
            f"only {len(answers)} of {expected} eval runners answered the recording check within "
            f"{RUNNER_CHECK_SECONDS:g} s (heard from: {', '.join(map(str, heard)) or 'none'}); the others' env could "
            f"not be made or reset in time, see the eval runners' log (Ray's logs folder) for why."
        )


class RoundPublisher:
    """Publishes one Algorithm's evaluation rounds into a session (see module docstring)."""

    def __init__(self, session, algorithm, *, session_token: str | None = None) -> None:
        self.session = session
        self.algorithm = algorithm
        self._history = WeightsHistory()
        self._inbox = session.inbox(name=inbox_name(session_token))
        self._round_env_steps = 0
        self._watcher: threading.Thread | None = None
        self._stop_watching = threading.Event()
        self._taken = 0
        self._lock = threading.Lock()  # one publisher at a time (watcher thread or main thread)
        self._problems: set[str] = set()
        self._drop_causes: set[str] = set()  # said once each; repeats go to the log only

    # ---- the Algorithm's lifecycle (called by the callback's driver hooks) ------------

    def started(self) -> None:
        """The Algorithm was built or restored: remember its weights, tell the eval runners."""
        self.note_weights()
        self.prepare_runners(evaluation_round=None)

    def note_weights(self) -> None:
        """Remember which training iteration the learner's current weights belong to."""
        algorithm = self.algorithm
        version, env_steps = _learner_weights_version(algorithm), _env_steps(algorithm)
        with critical(), self._lock:  # a stop waits: closing takes this lock too
            self._history.record(weights_seq_no=version, training_iteration=algorithm.iteration, env_steps=env_steps)

    def trained(self, result: dict) -> None:
        """A train() call ended: remember its weights and log its training metrics."""
        iteration = result["training_iteration"]
        env_steps = int(result.get(ENV_RUNNER_RESULTS, {}).get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0))
        version = _learner_weights_version(self.algorithm)
        with critical(), self._lock:  # a stop waits: closing takes this lock too
            self._history.record(weights_seq_no=version, training_iteration=iteration, env_steps=env_steps)
            metrics = {"env_steps": env_steps}  # the sink adds training_iteration, the step metric
            train_return = result.get(ENV_RUNNER_RESULTS, {}).get("episode_return_mean")
            if train_return is not None:
                metrics["train/return_mean"] = float(train_return)
            self.session.log_training(metrics, step=iteration)

    def runners_recreated(self, indices: list[int]) -> None:
        """RLlib restarted eval runners: they learn the round, its label and the inbox."""
        self.prepare_runners(evaluation_round=self.session.evaluation_round or None, indices=indices)

    def prepare_runners(self, *, evaluation_round: int | None, indices: list[int] | None = None) -> None:
        group = self.algorithm.eval_env_runner_group
        if group is None:
            return
        actor = self._inbox.actor
        with critical(), self._lock:
            round_ = RunnerRound(evaluation_round, copy.deepcopy(self._history), self.session.scenarios(),
                                 group.num_remote_workers(), select=self.session.options.select)
        self._inbox.set_round(round_)
        group.foreach_env_runner(
            lambda runner: prepare_runner(runner, actor, round_),
            local_env_runner=indices is None,
            remote_worker_ids=indices,
        )

    # ---- rounds -----------------------------------------------------------------------

    def begin_round(self) -> None:
        """The eval runners got the weights: start a round, tell them, publish as episodes arrive."""
        evaluation_round = self.session.begin_round()
        self._round_env_steps = _env_steps(self.algorithm)
        self.prepare_runners(evaluation_round=evaluation_round)
        self._stop_watching.clear()
        self._watcher = threading.Thread(target=self._watch, name="eval_recorder-publisher", daemon=True)
        self._watcher.start()

    def end_round(self) -> None:
        """The round ended: publish what is left and the round's summary (gallery, wandb)."""
        self._stop_watcher()
        self.publish_finished()
        session = self.session
        session.end_round()
        if session.round_episodes == 0:  # (episodes waiting for a full folder did arrive: said already)
            logger.warning("evaluation round %d ended without a recorded episode", session.evaluation_round)

    def publish_finished(self, *, timeout_seconds: float | None = None) -> int:
        """Take every episode that reached the inbox, tag, store and publish it; returns
        how many. (Also after Ctrl-C or SIGTERM: episodes finished on eval runners are
        already in the inbox.)"""
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
            while not (hurry is not None and hurry.is_set()):
                wait = min(in_flight_until, deadline) - time.monotonic()
                if wait <= 0 or self._inbox.wait(self._taken, timeout_s=wait) <= self._taken:
                    break
                published += self.publish_finished(timeout_seconds=max(deadline - time.monotonic(), 1.0))
        except Exception as error:
            logger.warning("could not collect the last finished episodes (%s: %s); %d were stored",
                           type(error).__name__, error, published)
        if in_round:
            try:
                self.session.end_round()
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
        for item in items:
            self._taken += 1
            if isinstance(item, RunnerProblem):
                if item.message not in self._problems:
                    self._problems.add(item.message)
                    logger.error("eval runner %d records no video: %s", item.runner_index, item.message)
                continue
            if isinstance(item, DroppedEpisode):
                self._say_dropped(item)
                continue
            tag = self._history.tag_for(item.weights_seq_no, env_steps_now=self._round_env_steps)
            self.session.publish(item, tag)
            published += 1
        return published


    def _say_dropped(self, dropped: DroppedEpisode) -> None:
        """One warning per cause (the first episode dropped for it); later ones in the log."""
        text = dropped_message(dropped)
        if dropped.cause in self._drop_causes:
            logger.info("%s", text)
        else:
            self._drop_causes.add(dropped.cause)
            logger.warning("%s", text)


def dropped_message(dropped: DroppedEpisode) -> str:
    """The warning for an episode whose video was dropped on an eval runner."""
    where = "" if dropped.evaluation_round is None else f"evaluation round {dropped.evaluation_round}: "
    return (f"{where}the video of an episode (seed {dropped.env_seed}) of eval runner {dropped.runner_index} is "
            f"dropped at step {dropped.step}, the others are recorded: {dropped.cause}")


def _env_steps(algorithm) -> int:
    return int(algorithm.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0))


def _learner_weights_version(algorithm) -> int:
    """The learner's current weights version (RLlib's WEIGHTS_SEQ_NO)."""
    results = algorithm.learner_group.foreach_learner(lambda learner: learner.get_state(components=[])[WEIGHTS_SEQ_NO])
    return int(next(iter(results)).get())
