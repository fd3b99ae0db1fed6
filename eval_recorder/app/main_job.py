"""The main job: training with recorded periodic evaluation (``python run_eval.py``).

``train_with_recording`` checks the config and builds the env once on the driver (nothing
is claimed before that), claims the video folder (before Ray starts), trains until
``training.iterations`` iterations with recorded evaluation (resuming the run's latest
checkpoint with ``recording.resume=true``), saves checkpoints, prints one line per
iteration and a summary, and returns an exit code.

A stop or the end prints the command that continues the run in its own folder
(``app/resume.continue_command``); a resume with nothing left to train says so and ends
before Ray starts or anything is claimed or written. A new run (not a resume) whose run id
another run under ``outputs/`` already has (its video folder's owner, or its wandb run) is
refused before anything is claimed or written: resuming is the way to continue that run.

Exit codes: 0 done (also: nothing left to train); 2 the user asked for something that cannot work (one sentence on
stderr says what and what to do; nothing of the user's was touched); 130 interrupted
(Ctrl-C), 143 stopped (SIGTERM): finished videos are written, the wandb run finished with
that code, the folder released, the resume command printed; 1 crashed (an exception; the
wandb run is finished with 1).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from eval_recorder.api import add_recording
from eval_recorder.app import console
from eval_recorder.app.algorithms import algorithm_config, build_algorithm, check_config, recording_options
from eval_recorder.app.checkpoints import checkpoint_path, latest_checkpoint
from eval_recorder.app.envs import env_choice, probe_env, run_setup
from eval_recorder.app.resume import continue_command
from eval_recorder.app.runs_index import update_runs_index
from eval_recorder.app.stopping import StartUp, claims_later, run_and_close, start_ray_shielded, stop_cleanly, stop_ray
from eval_recorder.errors import FolderRefused, RunnerRefused, UserError
from eval_recorder.folder_guard import folder_owner
from eval_recorder.session import RecordingSession
from eval_recorder.stopping import StopSignals

__all__ = ["train_with_recording"]

logger = logging.getLogger(__name__)


def _say(message: str) -> None:
    console.say(message)


def train_with_recording(cfg, output_dir: Path, *, overrides: list[str] = ()) -> int:
    """Run the main job; the exit code is returned (see module docstring). ``overrides``
    (the command line's options) go into the command printed to continue the run."""
    # SIGTERM stops the run as Ctrl-C does (KeyboardInterrupt here); stop.exit_code says which.
    with StopSignals(tell=lambda line: console.say(line, err=True)) as stop:
        try:
            return _run(cfg, Path(output_dir), stop, list(overrides))
        except KeyboardInterrupt:  # the stop came as the finished run was closing
            return 0


def _run(cfg, output_dir: Path, stop: StopSignals, overrides: list[str]) -> int:
    with StartUp(stop, interrupted="interrupted before the run started; nothing was recorded") as start:
        check_config(cfg)
        if cfg.recording.resume and not cfg.wandb.run_id:
            raise UserError("recording.resume=true needs the id of the run to continue: add wandb.run_id=<run id>.")
        run_setup(cfg.env.setup)
        choice = env_choice(cfg, seed=cfg.training.seed)
        options = recording_options(
            cfg, output_dir=output_dir, config=_plain(cfg), checkpoint_dir=str(output_dir / "checkpoints")
        )
        if not cfg.recording.resume and (taken := _run_id_taken(options, output_dir)) is not None:
            raise taken
        if cfg.recording.resume and (done := _trained_already(cfg, options)) is not None:
            # Nothing to train: said before Ray starts or anything is claimed or written.
            _say(f"run {options.run_id} already trained {done} iterations (training.iterations="
                 f"{cfg.training.iterations}): nothing to do; raise training.iterations to train on")
            return 0
        session = start.session = RecordingSession(options)
        facts = probe_env(choice, max_side=cfg.recording.max_side, seed=cfg.evaluation.seed,
                          scenarios=session.scenarios(), timeout_s=cfg.env.build_timeout)
        run_id = options.run_id
        if claims_later(cfg):
            session.check()  # what can be told now is refused before Ray starts; the callback claims
        else:
            session.open()  # refuses a folder in use before Ray starts
    if start.exit_code is not None:
        return start.exit_code
    # A resumed run keeps saving into, and restores from, its own checkpoints folder.
    owner = session.claim.owner if session.claim is not None else folder_owner(session.video_dir)
    checkpoints = Path(owner.get("checkpoint_dir") or output_dir / "checkpoints")

    def work() -> int:
        _say(f"run {run_id}: videos go to {console.shown(session.video_dir)}")
        resume_from = latest_checkpoint(checkpoints) if cfg.recording.resume else None
        if cfg.recording.resume:
            _say(f"resuming run {run_id} from {console.shown(resume_from.path)}" if resume_from
                 else f"resuming run {run_id}: it saved no checkpoint, training starts over")
        start = resume_from.training_iteration if resume_from else 0
        if _rounds_ahead(cfg, start) == 0:
            console.warn(f"nothing will be recorded: {_why_no_rounds(cfg, start)}.")
        code = _train(cfg, checkpoints, session, resume_from, choice, facts, stop, farewell=farewell)
        if code == 2:  # refused when the Algorithm was built: nothing was claimed
            return code
        more = {"training.iterations": 2 * cfg.training.iterations}  # as many iterations again
        _say(f"train on with: {continue_command(run_folder, run_id, overrides, more=more)}")
        return code

    run_folder = checkpoints.parent  # the run's own Hydra folder (a resumed run's too)

    def farewell() -> str:
        return _resume_hint(session, run_folder, overrides)

    return run_and_close(session, stop, work, farewell=farewell, run_folder=run_folder)


def _trained_already(cfg, options) -> int | None:
    """For a resume: the iterations run ``options.run_id`` already trained if that is
    ``training.iterations`` or more (its latest checkpoint, found through the video
    folder's owner record without claiming anything), else None."""
    checkpoint_dir = folder_owner(options.video_dir).get("checkpoint_dir")
    latest = latest_checkpoint(Path(checkpoint_dir)) if checkpoint_dir else None
    if latest is None or latest.training_iteration < cfg.training.iterations:
        return None
    return latest.training_iteration


def _run_id_taken(options, output_dir: Path):
    """The refusal of this new run if another run under ``outputs/`` (``app/resume.RUNS_ROOT``)
    owns its run id: a run folder whose video folder's owner record names it, or a wandb run
    of it in a run folder; None if none does. This run's own folder is the claim's to judge."""
    from eval_recorder.app.resume import VIDEOS, find_run_folders, run_folders
    from eval_recorder.run_ids import run_id_refusal

    own = output_dir.resolve()
    folders = [folder for folder in find_run_folders(options.run_id) if folder.resolve() != own]
    others = [folder for folder in run_folders() if folder.resolve() != own]
    return run_id_refusal(options.run_id, video_folders=[(folder, folder / VIDEOS) for folder in folders],
                          wandb_dirs=others)


def _resume_hint(session: RecordingSession, run_folder: Path, overrides: list[str]) -> str:
    command = continue_command(run_folder, session.options.run_id, overrides)
    return f"interrupted: {len(session.videos)} videos written in {console.shown(session.video_dir)}; continue with: {command}"



def _train(cfg, checkpoints: Path, session: RecordingSession, resume_from, choice, facts,
           stop: StopSignals, *, farewell) -> int:
    _say("starting Ray ..." if cfg.ray.address is None else f"joining the Ray cluster at {cfg.ray.address} ...")
    _say(start_ray_shielded(cfg))  # SIGTERM to the whole group: Ray stays up until the run is closed
    stop.install()  # Ray's core worker put its own SIGTERM handler in place (abort: exit code 134)
    config = algorithm_config(cfg, env=choice.specifier, env_config=choice.env_config, multi_agent=facts.multi_agent)
    if cfg.evaluation.render is not None:
        config = add_recording(config, session, render=cfg.evaluation.render)
    name = cfg.algorithm.name
    _say(f"building {name} (env runners start, the first rail drawing takes a few seconds) ..." if facts.flatland
         else f"building {name} (env runners start) ...")
    try:
        algo = build_algorithm(config)
    except (RunnerRefused, FolderRefused) as refused:  # the callback's check of the eval runners, or the claim
        console.error(str(refused))
        stop_ray()
        return 2
    update_runs_index(checkpoints.parent)  # the index of outputs/ lists this run from its start
    try:
        if resume_from is not None:
            _say(f"restoring iteration {resume_from.training_iteration} ...")
            algo.load_checkpoint(str(resume_from.path))
        last_checkpoint = resume_from.path if resume_from else None
        start, total, rounds_before = algo.iteration, cfg.training.iterations, session.evaluation_round
        bar = console.progress(total=total, initial=min(start, total), desc="training", unit="it")
        episodes = len(session.scenarios()) or cfg.evaluation.episodes
        session.on_video = lambda video: bar.describe(postfix=f"evaluating: {_round_count(session)}/{episodes} episodes")
        try:
            while algo.iteration < total:
                before, kept = len(session.videos), len(session.episodes)
                bar.describe(postfix="")
                result = algo.train()
                iteration = result["training_iteration"]
                bar.update(1)
                _say(_iteration_line(result, new_videos=session.videos[before:], new_episodes=session.episodes[kept:],
                                     total=total))
                update_runs_index(checkpoints.parent)
                every = cfg.training.checkpoint_every
                if (every and iteration % every == 0) or iteration == total:
                    last_checkpoint = _save(algo, checkpoint_path(checkpoints, iteration))
            if _final_round(cfg) and algo.iteration > start:
                # Parallel evaluation in call N shows the weights of N-1: the final weights
                # get their own round, tagged with the final iteration.
                before, kept = len(session.videos), len(session.episodes)
                bar.describe(desc="evaluating the final weights", postfix="")
                algo.evaluate()
                _say(_final_line(new_videos=session.videos[before:], new_episodes=session.episodes[kept:]))
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: store what finished, close, then stop Ray
            session.on_video = None
            bar.close()
            stop_cleanly(session, stop, farewell=farewell)
            raise
        finally:
            session.on_video = None
            bar.close()
        rounds = session.evaluation_round - rounds_before
        for line in console.summary_lines(session, checkpoint=last_checkpoint,
                                          nothing_recorded=_why_nothing(cfg, start, rounds)):
            _say(line)
        return 0
    finally:
        algo.stop()
        stop_ray()


def _save(algo, final: Path) -> Path:
    """Save a checkpoint so that it appears under ``final`` only when complete."""
    partial = final.with_name(f".{final.name}.partial-{os.getpid()}")
    algo.save_to_path(str(partial))
    partial.rename(final)
    return final


def _round_count(session: RecordingSession) -> int:
    """Videos of the evaluation round in progress (for the progress bar)."""
    round_now = session.evaluation_round
    return sum(1 for video in session.videos if video.metadata.get("evaluation_round") == round_now)


def _final_round(cfg) -> bool:
    """Whether the run evaluates once more after its last iteration: with evaluation
    parallel to training (and recording on), the last rounds showed earlier weights."""
    return cfg.evaluation.parallel_to_training and cfg.evaluation.render is not None


def _rounds_ahead(cfg, start: int) -> int:
    """Evaluation rounds that record, from iteration ``start`` to ``training.iterations``:
    RLlib evaluates in train() call n when n is a multiple of ``evaluation.interval``;
    with evaluation parallel to training one more round follows the last iteration."""
    if cfg.evaluation.render is None:
        return 0
    total, interval = cfg.training.iterations, cfg.evaluation.interval
    rounds = sum(1 for n in range(start + 1, total + 1) if n % interval == 0)
    return rounds + (1 if _final_round(cfg) and start < total else 0)


def _why_no_rounds(cfg, start: int) -> str:
    """Why ``_rounds_ahead(cfg, start)`` is 0, in the user's options."""
    total, interval = cfg.training.iterations, cfg.evaluation.interval
    if cfg.evaluation.render is None:
        return "evaluation.render=null turns recording off"
    if start >= total:
        return (f"run {cfg.wandb.run_id} already trained {start} iterations (training.iterations={total}); "
                f"raise training.iterations to train on")
    if start == 0:
        return (f"evaluation.interval={interval} is larger than training.iterations={total}, so no evaluation "
                f"round runs; lower evaluation.interval or raise training.iterations")
    return (f"no evaluation round falls in iterations {start + 1}-{total} (evaluation.interval={interval}); "
            f"lower evaluation.interval or raise training.iterations")


def _why_nothing(cfg, start: int, rounds: int) -> str:
    """The summary's reason for a run that recorded no video."""
    if rounds == 0:
        return _why_no_rounds(cfg, start)
    return (f"{rounds} evaluation round(s) ran but no episode reached the video folder; "
            f"see the warnings above and the log")


def _weights_part(new_episodes: list[dict]) -> list[str]:
    """``evaluated weights of iteration N: completion 0.50`` (or the mean return for envs
    without completion), over the episodes kept (with a video or not) in one train() call or round."""
    if not new_episodes:
        return []
    iterations = sorted({m["training_iteration"] for m in new_episodes})
    which = ", ".join(str(i) for i in iterations)
    completions = [m.get("completion") for m in new_episodes]
    if all(c is not None for c in completions):
        value = f"completion {sum(completions) / len(completions):.2f}"
    else:
        returns = [m["episode_return"] for m in new_episodes]
        value = f"return {sum(returns) / len(returns):.2f}"
    return [f"evaluated weights of iteration {which}: {value}"]


def _iteration_line(result: dict, *, new_videos: list, new_episodes: list[dict], total: int) -> str:
    runners = result.get("env_runners", {})
    parts = [
        f"iteration {result['training_iteration']}/{total}",
        f"env steps {int(runners.get('num_env_steps_sampled_lifetime', 0))}",
    ]
    if runners.get("episode_return_mean") is not None:
        parts.append(f"train return {runners['episode_return_mean']:.2f}")
    parts += _weights_part(new_episodes)
    parts.append(f"videos written {len(new_videos)}")
    return " | ".join(parts)


def _final_line(*, new_videos: list, new_episodes: list[dict]) -> str:
    return " | ".join(["final evaluation", *_weights_part(new_episodes), f"videos written {len(new_videos)}"])


def _plain(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
