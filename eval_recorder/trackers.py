"""Which trackers a run publishes to (``RecordingOptions.trackers``, ``trackers=`` on the
command line), and their sinks, made for the run's own folder.
"""

from __future__ import annotations

from pathlib import Path

from eval_recorder.sinks import Sink

__all__ = ["TRACKERS", "tracker_sinks"]

TRACKERS = ("wandb", "tensorboard", "mlflow")


def tracker_sinks(options, run_folder: Path) -> list[Sink]:
    """The sinks beside wandb that ``options.trackers`` asks for, not started yet: their
    runs live in ``run_folder`` (the run's own folder: TensorBoard's event files, the local
    MLflow store), so that a resumed run continues them."""
    sinks: list[Sink] = []
    if "tensorboard" in options.trackers:
        from eval_recorder.tensorboard_sink import TensorBoardSink

        sinks.append(TensorBoardSink(log_dir=run_folder, run_id=options.run_id))
    if "mlflow" in options.trackers:
        from eval_recorder.mlflow_sink import MlflowSink

        sinks.append(MlflowSink(run_id=options.run_id, run_dir=run_folder, tracking_uri=options.mlflow_tracking_uri,
                                experiment=options.mlflow_experiment, run_name=options.wandb_name,
                                resume=options.resume, config=options.config))
    return sinks
