"""The Hydra application of ``run_eval.py``: its config schema and ``--help``, the main job
(training with recorded evaluation) and standalone evaluation of saved checkpoints, built on
the ``eval_recorder`` library, which does the recording.
"""
