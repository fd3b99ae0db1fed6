"""Publishing to MLflow: the only module that calls mlflow.

``MlflowSink`` is one MLflow run per training run, found again by its ``eval_recorder.run_id``
tag and continued when the run resumes. By default it lives in a local SQLite store in the
run's folder (no server; ``mlflow ui`` opens it); a tracking server is asked first whether it
answers, so an unreachable one is said once and quickly. Any MLflow failure turns the sink off:
it never stops training nor costs a local video.
"""

from __future__ import annotations

import logging
import numbers
import re
import shlex
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eval_recorder.naming import tracker_caption
from eval_recorder.sinks import Sink

__all__ = ["FINISH_GRACE_S", "PROBE_TIMEOUT_S", "RUN_ID_TAG", "MlflowSink", "flatten_params"]

logger = logging.getLogger(__name__)

RUN_ID_TAG = "eval_recorder.run_id"
# Longest wait for a tracking server to answer before the sink turns itself off.
PROBE_TIMEOUT_S = 3.0
# How long finishing the run may still take once told to give up (a second stop signal).
FINISH_GRACE_S = 3.0
INSTALL_HINT = "MLflow is not installed: pip install -e '.[mlflow]'"

# MLflow's limits (mlflow.utils.validation), fixed here so they hold before mlflow is imported.
_MAX_KEY = 250
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")


def _key(name: Any) -> str:
    """``name`` as MLflow takes it: characters it refuses become ``_``, cut to its length
    limit (keys it takes are kept as given, e.g. ``eval/return_mean``)."""
    return _BAD_KEY_CHARS.sub("_", str(name))[:_MAX_KEY]


def flatten_params(config: Mapping, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``: nested mappings under dotted keys, values as
    text cut to MLflow's length limit for a param value."""
    params: dict[str, str] = {}
    for name, value in config.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            params.update(flatten_params(value, f"{key}."))
        else:
            params[_key(key)] = str(value)[:_MAX_PARAM_VALUE]
    return params


def _probe(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> BaseException | None:
    """None if the tracking server at ``uri`` answers at all (any HTTP status) within
    ``timeout_s``, else why not. MLflow itself would retry with backoff for minutes."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError:
        return None  # it answered
    except urllib.error.URLError as error:
        return error.reason if isinstance(error.reason, BaseException) else error
    except (OSError, ValueError) as error:
        return error
    return None


class MlflowSink(Sink):
    """An MLflow run that videos and metrics are published to (does nothing once failed).

    Each video and its sidecar JSON go to the run's artifacts under ``videos/it<iteration>/``;
    its caption is the run tag ``video.<stem>``. ``config`` is logged once as params (nested
    keys dotted). Metrics are logged at most once per key and step, also across a resume.
    Every method may be called from any thread (they take turns)."""

    name = "mlflow"

    def __init__(
        self,
        *,
        run_id: str,
        run_dir: Path,
        tracking_uri: str | None = None,
        experiment: str = "eval_recorder",
        run_name: str | None = None,
        resume: bool = False,
        config: dict | None = None,
    ) -> None:
        super().__init__()
        self.run_id = run_id
        self.run_dir = Path(run_dir)
        self.local = tracking_uri is None
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name or run_id
        self.resume = resume
        self.config = config or {}
        self.mlflow_run_id: str | None = None  # once started
        self._client = None
        self._finished = False
        self._logged_steps: dict[str, set[int]] = {}  # metric key -> steps it has in the run
        self._lock = threading.RLock()

    @property
    def active(self) -> bool:
        return self._client is not None and not self._failed and not self._finished

    def start(self) -> None:
        """Open the MLflow run (continue the one tagged with this run id when resuming)."""
        with self._lock:
            if self._client is not None or self._failed:
                return
            try:
                from mlflow.tracking import MlflowClient
            except ImportError as error:
                self.fail("start", ImportError(f"{INSTALL_HINT} ({error})"))
                return
            if self.local:
                self.tracking_uri = f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}"
            elif self.tracking_uri.startswith(("http://", "https://")):
                problem = _probe(self.tracking_uri)
                if problem is not None:
                    self.fail(f"reach {self.tracking_uri}", problem)
                    return
            try:
                if self.local:
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                client = MlflowClient(tracking_uri=self.tracking_uri)
                experiment_id = self._experiment_id(client)
                run = self._resumed_run(client, experiment_id) if self.resume else None
                if run is None:
                    run = client.create_run(experiment_id, run_name=self.run_name, tags={RUN_ID_TAG: self.run_id})
                else:
                    client.update_run(run.info.run_id, status="RUNNING")
                    self._logged_steps = {key: {m.step for m in client.get_metric_history(run.info.run_id, key)}
                                          for key in run.data.metrics}
                self._client, self.mlflow_run_id = client, run.info.run_id
                self._log_params(run.data.params)
            except Exception as error:  # MLflow is a publisher; its faults cost no video
                self.fail("start", error)

    def _experiment_id(self, client) -> str:
        from mlflow.exceptions import MlflowException

        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = (self.run_dir / "mlartifacts").resolve().as_uri() if self.local else None
        try:
            return client.create_experiment(self.experiment, artifact_location=location)
        except MlflowException:  # another process (a Tune trial) created it meanwhile
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def _resumed_run(self, client, experiment_id: str):
        """The run tagged with this run id (the newest, should there be several)."""
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{self.run_id}'",
                                  max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def _log_params(self, existing: dict[str, str]) -> None:
        """Log the config's params the run lacks (MLflow refuses to change a param: a resumed
        run keeps its first values)."""
        from mlflow.entities import Param

        params = flatten_params(self.config)
        changed = sorted(key for key, value in params.items() if key in existing and existing[key] != value)
        if changed:
            logger.info("mlflow run %s keeps its first values of params %s", self.mlflow_run_id, ", ".join(changed))
        new = [Param(key, value) for key, value in params.items() if key not in existing]
        for first in range(0, len(new), _PARAMS_PER_BATCH):
            self._client.log_batch(self.mlflow_run_id, params=new[first:first + _PARAMS_PER_BATCH], synchronous=True)

    def log_video(self, path: Path, metadata: dict, *, step: int) -> None:
        with self._lock:
            if not self.active:
                return
            path = Path(path)
            text = tracker_caption(metadata)
            try:
                folder = f"videos/it{int(metadata.get('training_iteration', step)):06d}"
                self._client.log_artifact(self.mlflow_run_id, str(path), artifact_path=folder)
                sidecar = path.with_suffix(".json")
                if sidecar.is_file():
                    self._client.log_artifact(self.mlflow_run_id, str(sidecar), artifact_path=folder)
                self._client.set_tag(self.mlflow_run_id, _key(f"video.{path.stem}"), text[:_MAX_TAG_VALUE])
            except Exception as error:
                self.fail("log videos", error)

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        """Log the numeric ``metrics`` at ``step``; a key the run already has at ``step`` is
        skipped (a resumed run re-playing an iteration)."""
        with self._lock:
            if not self.active:
                return
            from mlflow.entities import Metric

            now_ms = int(time.time() * 1000)
            batch = [Metric(_key(key), float(value), now_ms, step) for key, value in metrics.items()
                     if isinstance(value, numbers.Real) and step not in self._logged_steps.get(_key(key), ())]
            try:
                for first in range(0, len(batch), _METRICS_PER_BATCH):
                    self._client.log_batch(self.mlflow_run_id, metrics=batch[first:first + _METRICS_PER_BATCH],
                                           synchronous=True)
            except Exception as error:
                self.fail("log metrics", error)
                return
            for metric in batch:
                self._logged_steps.setdefault(metric.key, set()).add(step)

    def finish(self, exit_code: int = 0, *, give_up: threading.Event | None = None) -> None:
        """End the run: FINISHED for 0, KILLED for 130/143 (a stop signal), else FAILED.
        Once ``give_up`` is set, wait at most ``FINISH_GRACE_S`` more."""
        if not self.active:
            return
        self._finished = True  # later calls do nothing
        status = "FINISHED" if exit_code == 0 else "KILLED" if exit_code in (130, 143) else "FAILED"
        if give_up is None:
            self._terminate(status)
            return
        worker = threading.Thread(target=self._terminate, args=(status,), name="eval_recorder-mlflow-finish",
                                  daemon=True)
        worker.start()
        while worker.is_alive() and not give_up.is_set():
            worker.join(0.1)
        worker.join(FINISH_GRACE_S)
        if worker.is_alive():
            logger.warning("stopped waiting for mlflow to end run %s at %s", self.mlflow_run_id, self.tracking_uri)

    def _terminate(self, status: str) -> None:
        with self._lock:
            try:
                self._client.set_terminated(self.mlflow_run_id, status=status)
            except Exception as error:
                self.fail("finish", error)

    def where(self) -> list[str]:
        if self.mlflow_run_id is None:
            return []
        if self.tracking_uri.startswith(("http://", "https://", "databricks")):
            return [f"mlflow: run {self.mlflow_run_id} at {self.tracking_uri}"]
        return [f"mlflow: mlflow ui --backend-store-uri {shlex.quote(self.tracking_uri)}"]
