"""Publishing to Weights & Biases: the only module that calls wandb.

``WandbSink`` is one wandb run per training run (or per standalone evaluation): videos at
step = training iteration under stable keys (``video_key``), with captions, and evaluation
and training metrics at the same steps; offline by default (no account, no network), or
online, or disabled (``WANDB_MODES``). A wandb failure is logged once and turns the sink
off: it never stops training nor costs a local video. A run that failed after it started
(e.g. wandb's own folder full) is still finished at the end with the run's exit code, and
the sink keeps what the run lacks (``fault``, ``videos_sent``, ``videos_missed``, the
steps missed) for the run's summary, which calls it incomplete.

Online mode that cannot work falls back to offline without touching other wandb runs of
the process: the server is asked first (``probe_server``), so no online run is started
that is bound to fail. (A failed ``wandb.init`` leaves its run id held by the process's
wandb service, which only ``wandb.teardown()`` frees — and that ends every wandb run the
process has open. If an online start fails all the same, the sink tears down only when no
other wandb run is open; otherwise it turns itself off.)
"""

from __future__ import annotations

import base64
import json
import logging
import netrc
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from eval_recorder.sinks import Sink

__all__ = [
    "ONLINE_INIT_TIMEOUT_S",
    "ONLINE_PROBE_TIMEOUT_S",
    "WANDB_MODES",
    "WandbSink",
    "api_key_configured",
    "probe_server",
    "video_key",
]

logger = logging.getLogger(__name__)

WANDB_MODES = ("offline", "online", "disabled")
STEP_METRIC = "training_iteration"
LATE_VIDEO_PREFIX = "eval/video/late/"  # + the file's stem: a video that could not go to its own slot

# Longest wait for wandb's server to answer before online mode falls back to offline.
ONLINE_PROBE_TIMEOUT_S = 10.0
# Longest wait for wandb.init in online mode once the server answered (wandb itself retries
# for a while on top).
ONLINE_INIT_TIMEOUT_S = 15.0
_DEFAULT_BASE_URL = "https://api.wandb.ai"
# How long finishing a run may still take once told to give up (a second stop signal).
FINISH_GRACE_S = 3.0


def _base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", _DEFAULT_BASE_URL).rstrip("/")


def _api_key() -> str | None:
    """The API key wandb would use: WANDB_API_KEY, else the netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    host = urllib.parse.urlparse(_base_url()).hostname
    try:
        entry = netrc.netrc().authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def api_key_configured() -> bool:
    """True if wandb would find an API key: WANDB_API_KEY or a netrc entry for its host."""
    return _api_key() is not None


def probe_server(timeout_s: float = ONLINE_PROBE_TIMEOUT_S) -> str | None:
    """Ask wandb's server who the API key belongs to (the query ``wandb login`` makes):
    None if it answers and takes the key within ``timeout_s``, else why not, e.g.
    ``wandb could not be reached (ConnectionRefusedError)``."""
    key = _api_key() or ""
    request = urllib.request.Request(
        f"{_base_url()}/graphql",
        data=json.dumps({"query": "query Viewer { viewer { id } }"}).encode(),
        headers={"Content-Type": "application/json",
                 "Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            return f"wandb refused the API key (HTTP {error.code})"
        return f"wandb's server answered HTTP {error.code}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return f"wandb could not be reached ({type(reason).__name__})"
    return None


def _other_runs_open() -> bool:
    """Whether this process has wandb runs open (a teardown would end them). Unknown
    counts as yes."""
    try:
        import wandb

        return bool(wandb.setup()._active_runs)
    except Exception:
        return True


def video_key(episode_index: int) -> str:
    """Stable key: the same episode slot of every round lands on one media panel."""
    return f"eval/video/episode_{episode_index}"


class WandbSink(Sink):
    """A wandb run that videos and metrics are logged to (does nothing once failed)."""

    name = "wandb"

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
        console: bool = False,
    ) -> None:
        super().__init__()
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
        # wandb's own lines (banners, sync hints) reach the console only when asked for.
        self._quiet = not console
        self._run = None
        self._broken = None  # a started run that failed: nothing more is logged to it, it is finished at the end
        self._last_step = 0  # wandb drops rows logged at a step below one already used
        self._keys_at_last_step: set[str] = set()
        self.run_dir: Path | None = None
        self.fault: str | None = None  # what failed in the started run (it is incomplete), e.g. "log videos (...)"
        self.fault_step: int | None = None  # the step of the call that failed
        self.videos_sent = 0  # videos handed to wandb before any fault (wandb may still have lost them)
        self.videos_missed = 0  # videos that never went to wandb: the failed call's and every later one
        self.steps_missed: set[int] = set()  # steps of the calls that failed or were dropped after the fault

    @property
    def active(self) -> bool:
        return self._run is not None

    @property
    def incomplete(self) -> bool:
        """True if the run started and then failed: it lacks what was logged from the fault on."""
        return self.fault is not None

    def start(self) -> None:
        """Start the wandb run. ``online`` without an API key, with wandb's server
        unreachable within ``ONLINE_PROBE_TIMEOUT_S`` or refusing the key, falls back to
        ``offline`` with one warning; other wandb runs of the process are never ended."""
        if self.mode == "disabled" or self._run is not None:
            return
        import wandb

        Path(self._init_args["dir"]).mkdir(parents=True, exist_ok=True)
        if self.mode == "online":
            problem = ("no wandb API key is set (run `wandb login` or set WANDB_API_KEY)"
                       if not api_key_configured() else probe_server())
            if problem is not None:
                self._fall_back_offline(problem)
            else:
                try:
                    self._run = wandb.init(**self._init_args,
                                           settings=wandb.Settings(init_timeout=ONLINE_INIT_TIMEOUT_S,
                                                                  silent=self._quiet))
                except Exception as error:
                    # The failed attempt holds the run id in the process's wandb service
                    # until a teardown, which would end every other wandb run it has open.
                    if _other_runs_open():
                        self._fail("start online (other wandb runs of this process stay open)", error)
                        return
                    self._fall_back_offline(f"wandb could not start the run online ({type(error).__name__})")
                    wandb.teardown()
        if self._run is None and self.mode == "offline":
            try:
                self._run = wandb.init(**{**self._init_args, "mode": "offline"},
                                       settings=wandb.Settings(silent=self._quiet))
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

    def log_video(self, path: Path, metadata: dict, *, step: int) -> None:
        """Log one stored video at ``step`` (the sink interface)."""
        self.log_videos([(path, metadata)], metrics={}, step=step)

    def log_videos(self, records: list[tuple[Path, dict]], *, metrics: dict[str, float], step: int) -> None:
        """Log each (path, metadata) video once, plus ``metrics``, at ``step``."""
        if self._run is None:
            self._missed(step, videos=len(records))
            return
        import wandb

        from eval_recorder.naming import tracker_caption

        try:
            payload: dict[str, Any] = dict(metrics)
            step_now = max(step, self._last_step)
            for path, metadata in records:
                text = tracker_caption(metadata)
                key = video_key(metadata["episode_index"])
                if step_now != step or key in payload or (
                        step_now == self._last_step and key in self._keys_at_last_step):
                    # A video stored late (after a full disk) goes to a later step than its
                    # iteration, and wandb keeps one value per key and step: under a key of
                    # its own, it neither shows in another iteration's slot nor replaces one.
                    key = f"{LATE_VIDEO_PREFIX}{Path(path).stem}"
                payload[key] = wandb.Video(str(path), caption=text, format="mp4")
            self._log(payload, step)
        except Exception as error:
            self._fail("log videos", error, step=step, videos=len(records))
        else:
            self.videos_sent += len(records)

    def log_table(self, key: str, *, columns: list[str], rows: list[list], step: int) -> None:
        """Log a table whose last column holds video paths (embedded as videos)."""
        if self._run is None:
            self._missed(step)
            return
        import wandb

        try:
            table = wandb.Table(columns=columns)
            for *values, path in rows:
                table.add_data(*values, wandb.Video(str(path), format="mp4"))
            self._log({key: table}, max(step, self._last_step))
        except Exception as error:
            self._fail("log table", error, step=step)

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        if self._run is None:
            self._missed(step)
            return
        try:
            self._log(metrics, step)
        except Exception as error:
            self._fail("log metrics", error, step=step)

    def _missed(self, step: int, *, videos: int = 0) -> None:
        """A call to a run that failed: what it would have logged is not in the run."""
        if self._broken is not None:
            self.steps_missed.add(step)
            self.videos_missed += videos

    def _log(self, payload: dict, step: int) -> None:
        """Log at wandb step ``step`` (with ``training_iteration`` = ``step``, the charts' x
        axis). What belongs to an earlier step than one already logged (a video stored late,
        after a full disk) goes to the latest step, which wandb accepts, without a
        ``training_iteration`` of its own (it would replace that row's); its caption and
        key say its iteration."""
        step_now = max(step, self._last_step)
        self._run.log({STEP_METRIC: step, **payload} if step == step_now else payload, step=step_now)
        if step_now != self._last_step:
            self._keys_at_last_step = set()
        self._keys_at_last_step.update(payload)
        self._last_step = step_now

    def finish(self, exit_code: int = 0, *, give_up: threading.Event | None = None) -> None:
        """Finish the run with ``exit_code`` (0 done, 1 crashed, 130/143 stopped by a
        signal). Once ``give_up`` is set, wait at most ``FINISH_GRACE_S`` more (whatever
        wandb's service already wrote stays in the run's files)."""
        run, self._run, self._broken = self._run or self._broken, None, None
        if run is None:
            return
        if give_up is None:
            self._finish(run, exit_code)
            return
        worker = threading.Thread(target=self._finish, args=(run, exit_code), name="eval_recorder-wandb-finish",
                                  daemon=True)
        worker.start()
        while not give_up.wait(0.1):
            if not worker.is_alive():
                return
        worker.join(FINISH_GRACE_S)  # an offline run finishes within about a second
        if worker.is_alive():
            logger.warning("stopped waiting for wandb to finish run %s; what it wrote so far stays in %s",
                           self._init_args["id"], self.run_dir)

    def _finish(self, run, exit_code: int) -> None:
        try:
            run.finish(exit_code=exit_code)
        except Exception as error:
            if self.fault is None:  # a run that failed before was reported then
                self._fail("finish", error)
            else:
                logger.info("wandb could not finish run %s (%s: %s)", self._init_args["id"], type(error).__name__,
                            error)

    def _fail(self, what: str, error: Exception, *, step: int | None = None, videos: int = 0) -> None:
        """Say once that wandb could not ``what`` and stop logging; a started run is kept,
        to be finished with the run's exit code (what wandb already wrote stays in it)."""
        logger.warning("wandb could not %s (%s: %s); wandb logging is off, videos are still saved locally.",
                       what, type(error).__name__, error)
        if self._run is not None and self.fault is None:
            self.fault = f"wandb could not {what} ({type(error).__name__}: {_reason(error)})"
            self.fault_step = step
            self._broken = self._run
            if step is not None:
                self.steps_missed.add(step)
            self.videos_missed += videos
        self._run = None


def _reason(error: Exception) -> str:
    """The error's reason without the file names an OSError carries (they are long)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)
