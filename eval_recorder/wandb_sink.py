"""Publishing to Weights & Biases: the only module that calls wandb.

Holds:
  WANDB_MODES   the modes understood: offline (default; no account, no network),
                online, disabled.
  api_key_configured()  whether wandb would find an API key (online mode needs one).
  WandbSink     one wandb run per training run (or per standalone evaluation):
                videos at step = training iteration under stable keys
                (``eval/video/episode_<i>``), with captions; evaluation and training
                metrics at the same steps. A wandb failure is logged once and turns the
                sink off: it never stops training nor costs a local video.
  video_key()   the stable wandb key of the i-th episode of an evaluation round.
"""

from __future__ import annotations

import logging
import netrc
import os
import urllib.parse
from pathlib import Path
from typing import Any

__all__ = ["WANDB_MODES", "WandbSink", "video_key"]

logger = logging.getLogger(__name__)

WANDB_MODES = ("offline", "online", "disabled")
STEP_METRIC = "training_iteration"

# Longest wait for wandb's servers in online mode before falling back to offline
# (wandb itself adds about 10 s of retries on top).
ONLINE_INIT_TIMEOUT_S = 15.0


def api_key_configured() -> bool:
    """True if wandb would find an API key: WANDB_API_KEY or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def video_key(episode_index: int) -> str:
    """Stable key: the same episode slot of every round lands on one media panel."""
    return f"eval/video/episode_{episode_index}"


class WandbSink:
    """A wandb run that videos and metrics are logged to (does nothing once failed)."""

    def __init__(
        self,
        *,
        mode: str,
        project: str,
        run_id: str,
        run_dir: Path,
        entity: str | None = None,
        job_type: str = "train",
        name: str | None = None,
        resume: bool = False,
        config: dict[str, Any] | None = None,
    ) -> None:
        if mode not in WANDB_MODES:
            raise ValueError(f"wandb.mode must be one of {WANDB_MODES}, got {mode!r}")
        self.mode = mode
        self._init_args = dict(
            project=project,
            entity=entity,
            id=run_id,
            name=name,
            dir=str(run_dir),
            mode=mode,
            job_type=job_type,
            resume="allow" if resume else None,
            config=config or {},
            reinit="create_new",
        )
        self._run = None
        self._last_step = 0  # wandb drops rows logged at a step below one already used
        self.run_dir: Path | None = None

    @property
    def active(self) -> bool:
        return self._run is not None

    def start(self) -> None:
        """Start the wandb run. ``online`` without an API key, or with wandb unreachable
        within ``ONLINE_INIT_TIMEOUT_S``, falls back to ``offline`` with one warning."""
        if self.mode == "disabled" or self._run is not None:
            return
        import wandb

        Path(self._init_args["dir"]).mkdir(parents=True, exist_ok=True)
        if self.mode == "online":
            if not api_key_configured():
                self._fall_back_offline("no wandb API key is set (run `wandb login` or set WANDB_API_KEY)")
            else:
                try:
                    self._run = wandb.init(**self._init_args,
                                           settings=wandb.Settings(init_timeout=ONLINE_INIT_TIMEOUT_S))
                except Exception as error:
                    self._fall_back_offline(f"wandb could not be reached ({type(error).__name__})")
                    wandb.teardown()  # the failed attempt still holds the run id in wandb's service
        if self._run is None and self.mode == "offline":
            try:
                self._run = wandb.init(**{**self._init_args, "mode": "offline"})
            except Exception as error:  # wandb is a publisher; its faults cost no video
                self._fail("start", error)
                return
        if self._run is not None:
            self.run_dir = Path(self._run.dir).parent
            self._declare_step_metric()

    def _declare_step_metric(self) -> None:
        """Charts and the media slider use training iterations, not wandb's internal steps."""
        try:
            self._run.define_metric(STEP_METRIC)
            for pattern in ("eval/*", "train/*", "env_steps"):
                self._run.define_metric(pattern, step_metric=STEP_METRIC)
        except Exception as error:
            self._fail("define metrics", error)

    def _fall_back_offline(self, reason: str) -> None:
        logger.warning(
            "%s; wandb.mode=online falls back to offline: videos and metrics go to a local wandb run "
            "(its `wandb sync` command is printed at the end) and recording goes on.", reason)
        self.mode = "offline"

    def log_videos(self, records: list[tuple[Path, dict]], *, metrics: dict[str, float], step: int) -> None:
        """Log each (path, metadata) video once, plus ``metrics``, at ``step``."""
        if self._run is None:
            return
        import wandb

        from eval_recorder.naming import caption

        try:
            payload: dict[str, Any] = dict(metrics)
            for path, metadata in records:
                payload[video_key(metadata["episode_index"])] = wandb.Video(
                    str(path), caption=caption(metadata), format="mp4"
                )
            self._log(payload, step)
        except Exception as error:
            self._fail("log videos", error)

    def log_table(self, key: str, *, columns: list[str], rows: list[list], step: int) -> None:
        """Log a table whose last column holds video paths (embedded as videos)."""
        if self._run is None:
            return
        import wandb

        try:
            table = wandb.Table(columns=columns)
            for *values, path in rows:
                table.add_data(*values, wandb.Video(str(path), format="mp4"))
            self._log({key: table}, max(step, self._last_step))
        except Exception as error:
            self._fail("log table", error)

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        if self._run is None:
            return
        try:
            self._log(metrics, step)
        except Exception as error:
            self._fail("log metrics", error)

    def _log(self, payload: dict, step: int) -> None:
        self._run.log({STEP_METRIC: step, **payload}, step=step)
        self._last_step = max(self._last_step, step)

    def finish(self, exit_code: int = 0) -> None:
        if self._run is None:
            return
        run, self._run = self._run, None
        try:
            run.finish(exit_code=exit_code)
        except Exception as error:
            self._fail("finish", error)

    def _fail(self, what: str, error: Exception) -> None:
        logger.warning("wandb could not %s (%s: %s); wandb logging is off, videos are still saved locally.",
                       what, type(error).__name__, error)
        self._run = None
