"""Standalone evaluation of saved checkpoints (``python run_eval.py checkpoint=PATH``).

``evaluate_checkpoints`` takes any new-API-stack Algorithm checkpoint (PPO, APPO, IMPALA,
DQN, SAC, ...; also ones whose config never had recording, and multi-policy ones, played
with their own policy mapping), or a run folder of them: it reads and checks every
checkpoint file, finds the env (the checkpoint's own, registered through ``env.setup``; or
the one the user names), builds it once and checks it fits each policy — all before
anything is claimed — then claims the video folder and evaluates each checkpoint through
the same recording path as periodic evaluation (add_recording + the callback + the session).

A stopped run prints the command that continues it (``app/resume.continue_command``, as the
main job does). A continued run (``recording.resume=true wandb.run_id=X``) skips, in one
line, the checkpoints whose videos are all stored: the folder's manifest holds, for one
evaluation round of run X, a video of every episode asked (``evaluation.episodes`` or the
saved scenarios) from that checkpoint's path and iteration (``stored_checkpoints``); a
checkpoint stopped part way is evaluated again, whole, in a new round. With nothing left
it says so and ends before anything is claimed or Ray starts.

Exit codes as for the main job: 0 done, 2 refused, 1 crashed, 130 Ctrl-C, 143 SIGTERM (the
episodes that finished are stored and the wandb run finished with that code).
"""

from __future__ import annotations

import json
from pathlib import Path

from eval_recorder.app import console
from eval_recorder.app.algorithms import build_algorithm, check_config, evaluation_settings, recording_options
from eval_recorder.app.checkpoints import CheckpointInfo, find_checkpoints
from eval_recorder.app.runs_index import update_runs_index
from eval_recorder.app.stopping import StartUp, claims_later, run_and_close, start_ray_shielded, stop_cleanly, stop_ray
from eval_recorder.app.envs import EnvChoice, check_fits, checkpoint_env_choice, env_choice, probe_env, run_setup
from eval_recorder.app.resume import continue_command
from eval_recorder.errors import FolderRefused, RunnerRefused, UserError
from eval_recorder.stopping import StopSignals
from eval_recorder.video_index import read_manifest

__all__ = ["evaluate_checkpoints", "stored_checkpoints"]


def evaluate_checkpoints(cfg, output_dir: Path, checkpoint: str, *, env_overridden: bool,
                         overrides: list[str] = ()) -> int:
    """Evaluate and record every checkpoint at ``checkpoint``; returns the exit code.
    ``overrides`` (the command line's options) go into the command printed to continue it."""
    # SIGTERM stops the evaluation as Ctrl-C does (KeyboardInterrupt here); stop.exit_code says which.
    with StopSignals(tell=lambda line: console.say(line, err=True)) as stop:
        try:
            return _run(cfg, Path(output_dir), checkpoint, env_overridden=env_overridden, stop=stop,
                        overrides=list(overrides))
        except KeyboardInterrupt:  # the stop came as the finished evaluation was closing
            return 0


def stored_checkpoints(records: list[dict], infos: list[CheckpointInfo], *, run_id: str, episodes: int,
                       folder: Path) -> list[CheckpointInfo]:
    """The checkpoints of ``infos`` whose videos are all stored: for one evaluation round
    of run ``run_id``, ``records`` (the folder's manifest) hold a video of each episode
    index ``0 .. episodes-1`` made from that checkpoint (its path and training
    iteration), and each of those files is in ``folder``."""
    rounds: dict[tuple[str, int, object], set] = {}
    for record in records:
        if record.get("run_id") != run_id or not isinstance(record.get("file"), str):
            continue
        if not (folder / record["file"]).is_file():
            continue
        key = (record.get("checkpoint"), record.get("training_iteration"), record.get("evaluation_round"))
        rounds.setdefault(key, set()).add(record.get("episode_index"))
    wanted = set(range(episodes))
    done = {(path, iteration) for (path, iteration, _round), indices in rounds.items() if wanted <= indices}
    return [info for info in infos if (str(info.path), info.training_iteration) in done]


def _run(cfg, output_dir: Path, checkpoint: str, *, env_overridden: bool, stop: StopSignals,
         overrides: list[str]) -> int:
    from eval_recorder.session import RecordingSession

    with StartUp(stop, interrupted="interrupted before the evaluation started; nothing was recorded") as start:
        check_config(cfg)
        if cfg.recording.resume and not cfg.wandb.run_id:
            raise UserError("recording.resume=true needs the id of the run to continue: add wandb.run_id=<run id>.")
        infos = find_checkpoints(checkpoint)
        run_setup(cfg.env.setup)
        options = recording_options(cfg, output_dir=output_dir, wandb_job_type="eval",
                                    config={"checkpoints": [str(info.path) for info in infos]})
        session = start.session = RecordingSession(options)
        if cfg.recording.resume:
            # Read before anything is claimed: what earlier processes of the run stored.
            episodes = len(session.scenarios()) or cfg.evaluation.episodes
            done = stored_checkpoints(read_manifest(options.video_dir), infos, run_id=options.run_id,
                                      episodes=episodes, folder=Path(options.video_dir))
            if done:
                console.say(f"skipping {len(done)} of {len(infos)} checkpoint(s) whose videos are all stored: "
                            f"{', '.join(console.shown(info.path) for info in done)}")
                infos = [info for info in infos if info not in done]
            if not infos:
                console.say(f"run {options.run_id}: nothing left to evaluate; its videos are in "
                            f"{console.shown(options.video_dir)}")
                start.session = None
                return 0
        choices, probed = [], {}
        for info in infos:
            choice = env_choice(cfg, seed=cfg.training.seed) if env_overridden else checkpoint_env_choice(info)
            key = _key(choice)
            if key not in probed:
                probed[key] = probe_env(choice, max_side=cfg.recording.max_side, seed=cfg.evaluation.seed,
                                        scenarios=session.scenarios(), timeout_s=cfg.env.build_timeout)
            check_fits(probed[key], info, choice)
            choices.append(choice)
        run_id = options.run_id
        if claims_later(cfg):
            session.check()  # what can be told now is refused before Ray starts; the callback claims
        else:
            session.open()
    if start.exit_code is not None:
        return start.exit_code
    console.say(f"run {run_id}: evaluating {len(infos)} checkpoint(s), videos go to {console.shown(session.video_dir)}")
    if session.is_open:
        update_runs_index(output_dir)  # the index of outputs/ lists this evaluation from its start

    def work() -> int | None:
        try:
            _evaluate(cfg, infos, choices, session, stop, farewell=farewell)
        except (RunnerRefused, FolderRefused) as refused:  # the eval runners' check, or the claim
            console.error(str(refused))
            return 2
        _print_table(session)

    def farewell() -> str:
        return _interrupted(session, output_dir, overrides)

    return run_and_close(session, stop, work, farewell=farewell, run_folder=output_dir)


def _interrupted(session, run_folder: Path, overrides: list[str]) -> str:
    """What a stopped evaluation prints last: what it wrote, and how to continue it."""
    command = continue_command(run_folder, session.options.run_id, overrides)
    return (f"interrupted: {len(session.videos)} videos written in {console.shown(session.video_dir)}; "
            f"continue with: {command}")


def _key(choice: EnvChoice) -> str:
    return json.dumps([str(choice.specifier), choice.env_config], sort_keys=True, default=str)


def _evaluate(cfg, infos: list[CheckpointInfo], choices: list[EnvChoice], session, stop: StopSignals, *,
              farewell) -> None:
    console.say(start_ray_shielded(cfg))  # SIGTERM to the whole group: Ray stays up until the run is closed
    stop.install()  # Ray's core worker put its own SIGTERM handler in place (abort: exit code 134)
    episodes = len(session.scenarios()) or cfg.evaluation.episodes
    bar = console.progress(total=len(infos) * episodes, unit="episode", desc="evaluating")
    session.on_video = lambda video: bar.update(1)  # each episode as it reaches the folder
    algo, built_for = None, None
    try:
        for info, choice in zip(infos, choices):
            # Checkpoints of one run share a config: one Algorithm serves them, in
            # increasing iteration order (eval runners take only newer weights).
            key = (json.dumps(info.config, sort_keys=True, default=str), _key(choice))
            if algo is None or key != built_for[0] or info.training_iteration <= built_for[1]:
                if algo is not None:
                    algo.stop()
                bar.describe(f"it{info.training_iteration:06d}: building")
                algo = _build(cfg, info, choice, session)
            built_for = (key, info.training_iteration)
            session.checkpoint = str(info.path)
            bar.describe(f"it{info.training_iteration:06d}: restoring")
            algo.load_checkpoint(str(info.path))
            bar.describe(f"it{info.training_iteration:06d}: evaluating")
            try:
                algo.evaluate()
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: store what finished, close, then stop Ray
                bar.close()
                stop_cleanly(session, stop, farewell=farewell)
                raise
    finally:
        bar.close()
        session.on_video = None
        if algo is not None:
            algo.stop()
        stop_ray()


def _build(cfg, info: CheckpointInfo, choice: EnvChoice, session):
    from eval_recorder.api import add_recording

    config = info.algorithm_class.get_default_config().update_from_dict(info.config)
    config.evaluation_config = None  # the stored evaluation overrides belong to the old run
    config = (
        config.environment(env=choice.specifier, env_config=choice.env_config)
        .env_runners(num_env_runners=0)
        .learners(num_learners=0)
        .evaluation(**evaluation_settings(cfg, interval=1, parallel=False))
    )
    config = add_recording(config, session, render=cfg.evaluation.render or "human")
    return build_algorithm(config)


def _print_table(session) -> None:
    flatland = all(video.metadata.get("agents_arrived") is not None for video in session.videos)
    facts = "arrived" if flatland else "length"
    header = f"{'iteration':>9}  {'env steps':>9}  {'episode':>7}  {'return':>9}  {'arrived':>7}  {'length':>6}  video"
    if not flatland:
        header = f"{'iteration':>9}  {'env steps':>9}  {'episode':>7}  {'return':>9}  {'length':>6}  video"
    console.say(header)
    for video in session.videos:
        m = video.metadata
        arrived = f"  {m['agents_arrived']:>3}/{m['num_agents']:<3}" if facts == "arrived" else ""
        console.say(f"{m['training_iteration']:>9}  {m['env_steps']:>9}  {m['episode_index']:>7}  "
                    f"{m['episode_return']:>9.2f}{arrived}  {m['episode_length']:>6}  {console.shown(video.path)}")
    for line in console.summary_lines(session, show_manifest=False,
                                      nothing_recorded="no evaluation episode reached the video folder; "
                                                       "see the warnings above and the log"):
        console.say(line)
