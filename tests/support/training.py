"""Training a recorded RLlib config in the test process (the session's local Ray)."""

from __future__ import annotations

from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from eval_recorder import recording_session


class LearnerVersions(RLlibCallback):
    """Remembers, at the end of every train() call, the learner's weights version (the
    ground truth the tags are checked against)."""

    versions: dict[int, int] = {}  # training iteration -> weights version at its end

    def on_train_result(self, *, algorithm, result, **kwargs):
        versions = algorithm.learner_group.foreach_learner(lambda l: l.get_state(components=[])[WEIGHTS_SEQ_NO])
        LearnerVersions.versions[result["training_iteration"]] = int(next(iter(versions)).get())


def train(config, iterations: int, *, until=None, at_most: int | None = None) -> list[dict]:
    """Build, train ``iterations`` times (then, with ``until``, on until ``until()`` holds or
    ``at_most`` iterations ran), close the recording session, stop; the results."""
    LearnerVersions.versions = {0: 0}  # a new learner starts at version 0
    with recording_session(config):
        algo = config.build_algo()
        try:
            results = [algo.train() for _ in range(iterations)]
            while until is not None and not until() and len(results) < at_most:
                results.append(algo.train())
            return results
        finally:
            algo.stop()


def expected_tag(weights_seq_no: int, versions: dict[int, int], evaluating_iteration: int) -> int:
    """The documented tag (README "Which weights a video shows") of a weights version seen
    by evaluation in train() call N: the latest iteration before N that ended holding
    exactly it; else the first that ended holding a newer one (it was synced in the middle
    of that iteration); else N, the call that was running."""
    known = {iteration: version for iteration, version in versions.items() if iteration < evaluating_iteration}
    exact = [iteration for iteration, version in known.items() if version == weights_seq_no]
    if exact:
        return max(exact)
    later = [iteration for iteration, version in known.items() if version > weights_seq_no]
    return min(later) if later else evaluating_iteration
