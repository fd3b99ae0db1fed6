"""What runs in an eval runner process: learning the round, probing the envs, delivering
each finished episode to the driver's inbox stamped with the weights that acted, and each
episode whose video was dropped (``DroppedEpisode``: why), for the driver to say.

The RLlib callback's runner hooks call these; the driver calls ``prepare_runner`` and
``probe_runner`` on its eval runners through ``EnvRunnerGroup.foreach_env_runner``. Nothing
here writes a file: finished episodes travel to the driver through Ray (the inbox actor).
"""

from __future__ import annotations

import dataclasses
import logging

from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from eval_recorder.errors import RecordingInTraining
from eval_recorder.inbox import deliver, find_inbox
from eval_recorder.runner_round import RunnerRound, scenario_share, this_process
from eval_recorder.wrapper import recording_wrapper

__all__ = [
    "RunnerProblem", "deliver_drawn", "deliver_finished", "inbox_name", "know_the_round", "prepare_runner", "probe_runner",
    "recording_envs", "refuse_recording_in_training",
]

logger = logging.getLogger(__name__)

INBOX_ANSWER_SECONDS = 60.0  # longest a restarted runner waits for the inbox to say the round


@dataclasses.dataclass(frozen=True)
class RunnerProblem:
    """An eval runner could not record (e.g. its env renders no frames): what and where."""

    message: str
    runner_index: int


def inbox_name(session_token: str | None) -> str | None:
    """The name of a session's inbox actor, the same on the driver and its eval runners:
    after the session's token; for a Tune trial's own session (no token), after the
    placement group Tune reserved for the trial, which holds the trial's driver and its env
    runners (also one Ray restarted) and no other trial's; None outside one."""
    if session_token is not None:
        return f"eval_recorder_inbox_{session_token}"
    import ray

    group = ray.get_runtime_context().get_placement_group_id() if ray.is_initialized() else None
    return None if group is None else f"eval_recorder_inbox_trial_{group}"


def prepare_runner(env_runner, inbox_actor, round_: RunnerRound) -> None:
    """Runs on an eval runner (via Ray): where to deliver episodes, and this round's
    number, label iteration and share of the saved scenarios."""
    state = this_process()
    state.start(round_, inbox=inbox_actor, label_iteration=_label_iteration(env_runner, round_),
                scenarios=scenario_share(round_.scenarios, env_runner.worker_index, round_.num_runners))


def know_the_round(env_runner, session_token: str | None) -> None:
    """Before each episode: a runner restarted in the middle of a round asks the inbox for
    the round; then the episode is labelled with the iteration of the weights it holds."""
    state = this_process()
    if state.round is None and (name := inbox_name(session_token)) is not None:
        import ray

        actor = find_inbox(name)
        round_ = ray.get(actor.round_state.remote(), timeout=INBOX_ANSWER_SECONDS) if actor is not None else None
        if round_ is not None:
            prepare_runner(env_runner, actor, round_)
    state.label_iteration = _label_iteration(env_runner, state.round)


def _label_iteration(env_runner, round_: RunnerRound | None) -> int | None:
    """Training iteration of the weights the runner holds (RLlib stamps the version on
    every action), for the burned-in label."""
    version = getattr(env_runner, "_weights_seq_no", None)
    if version is None or round_ is None:
        return None
    try:
        return round_.history.tag_for(version, env_steps_now=0).training_iteration
    except ValueError:
        return None


def recording_envs(env_runner) -> list:
    """The recording wrappers of an env runner's envs (none on training runners)."""
    vector_env = getattr(env_runner, "env", None)
    if vector_env is None:
        return []
    wrappers = [recording_wrapper(env) for env in getattr(vector_env.unwrapped, "envs", [])]
    return [wrapper for wrapper in wrappers if wrapper is not None]


def probe_runner(env_runner) -> tuple[str | None, str | None, int]:
    """Runs on an eval runner: (problem, env label, worker index) of its first recording
    env, after its scratch folder was written and read back and after one reset and its
    frames; (None, label, index) if it records, ("...", None, index) if it cannot. Never
    raises: whatever fails is the problem, in one sentence."""
    index = getattr(env_runner, "worker_index", 0)
    wrappers = recording_envs(env_runner)
    if not wrappers:
        return "the evaluation env runners have no recording env (is render: human in their env config?)", None, index
    wrapper = wrappers[0]
    try:
        problem = wrapper.probe()
    except Exception as error:  # the user's env: its reset, its scenario loading ...
        text = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else type(error).__name__
        problem = (f"the evaluation env {wrapper.label} of eval runner {index} failed its first reset "
                   f"({type(error).__name__}: {text}); fix the env so that it resets.")
    return problem, (wrapper.label if problem is None else None), index


def refuse_recording_in_training(env_runner, env) -> None:
    """A training runner whose env records: refused (recording is evaluation-only)."""
    if env_runner.config.in_evaluation:
        return
    if any(recording_wrapper(sub) is not None for sub in getattr(env.unwrapped, "envs", [])):
        raise RecordingInTraining()


def deliver_finished(episode, env_runner, env, env_index: int) -> None:
    """An episode ended on this eval runner: hand its video (stamped with the weights
    version that acted and the round it was played in) to the driver's inbox at once, and
    what was dropped (and why), and say once per env why it records nothing, if it cannot."""
    wrapper = recording_wrapper(env.unwrapped.envs[env_index])
    if wrapper is None:
        return
    state = this_process()
    if wrapper.problem is not None and id(wrapper) not in state.reported and state.inbox is not None:
        state.reported.add(id(wrapper))
        deliver(state.inbox, RunnerProblem(wrapper.problem, env_runner.worker_index))
    wrapper.stamp(weights_seq_no=_weights_version(episode, env_runner), evaluation_round=state.evaluation_round)
    _deliver(wrapper, state, wait=False)


def deliver_done(env, env_index: int) -> None:
    """After a step: hand the driver's inbox the finished episodes whose videos the encoder
    helper has finished since (without waiting), so a video reaches the driver as soon as
    it is done, as it did when the env waited for it (a stop right after an episode loses none)."""
    wrapper = recording_wrapper(env.unwrapped.envs[env_index])
    if wrapper is not None and wrapper.waiting:
        # stamped ones only: at the step that ends an episode this fires before on_episode_end stamps it
        _deliver(wrapper, this_process(), wait=False, stamped=True)


def deliver_drawn(env_runner) -> None:
    """At the end of a runner's ``sample()``: the episodes whose videos were still being
    drawn (beside the env: the last episode's, or with a narrower ``recording.select`` the
    ones drawn after they ended) are waited for and handed to the driver's inbox, so a
    round's episodes are all in when the runners' sampling returns."""
    state = this_process()
    for wrapper in recording_envs(env_runner):
        _deliver(wrapper, state, wait=True)


def _deliver(wrapper, state, *, wait: bool, stamped: bool = False) -> None:
    # a video that failed to draw is said below; its episode comes without it (its replay record)
    finished = wrapper.pop_finished(wait=wait, stamped=stamped)
    for dropped in wrapper.pop_dropped():
        dropped = dataclasses.replace(dropped, evaluation_round=state.evaluation_round)
        if state.inbox is None:
            logger.warning("the video of an episode is dropped: %s", dropped.cause)
        else:
            deliver(state.inbox, dropped)
    for episode in finished:
        if state.inbox is None:
            logger.error("no driver inbox is known on this eval runner; episode of %d steps is lost",
                         episode.episode_length)
        else:
            deliver(state.inbox, episode)


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
