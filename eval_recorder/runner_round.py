"""The evaluation round as an eval runner process knows it: what the driver told it (one
``RunnerRound``, sent through Ray and kept in the inbox) and this process's one state.

The driver sends a ``RunnerRound`` before every round; a runner restarted in the middle
of a round finds the same message in the driver's inbox. The recording wrappers of the
process read the round from ``this_process()``: the training iteration of the weights
the runner acts with (for the burned-in label) and the next saved scenario to play.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from eval_recorder.tags import WeightsHistory

__all__ = ["RunnerRound", "RunnerState", "scenario_share", "this_process"]


@dataclass(frozen=True)
class RunnerRound:
    """What the driver tells its eval runners before a round."""

    evaluation_round: int | None = None
    history: WeightsHistory = field(default_factory=WeightsHistory)  # weights versions -> training iterations
    scenarios: list[tuple[str, bytes]] = field(default_factory=list)  # every saved scenario (name, bytes) of the round
    num_runners: int = 1  # remote eval runners the round's scenarios are shared among
    select: str = "all"  # recording.select: a runner draws only the episodes it may choose (selection.may_be_chosen)


def scenario_share(scenarios: list, worker_index: int, num_runners: int) -> list:
    """The scenarios eval runner ``worker_index`` (1-based; 0 = the local runner) plays in a
    round: RLlib gives runner i of n ``k // n + (i <= k % n)`` of k episodes; runner i
    takes the next ones in order."""
    if not scenarios or worker_index == 0 or num_runners <= 1:
        return list(scenarios)
    count = len(scenarios)
    sizes = [count // num_runners + (i <= count % num_runners) for i in range(1, num_runners + 1)]
    start = sum(sizes[: worker_index - 1])
    return list(scenarios[start : start + sizes[worker_index - 1]])


class RunnerState:
    """This process's view of the current round (one per process: ``this_process()``)."""

    def __init__(self) -> None:
        self.inbox = None  # the driver's inbox actor finished episodes are delivered to
        self.round: RunnerRound | None = None
        self.label_iteration: int | None = None  # training iteration of the weights acted with
        self.reported: set[int] = set()  # envs whose recording problem was already reported
        self._scenarios: list[tuple[str, bytes]] = []
        self._next = 0
        self._lock = threading.Lock()
        self._played: list = []  # the facts (selection.EpisodeFacts) of this round's episodes played here

    def played(self, facts) -> list:
        """The facts of the round's episodes played here before this one, which is added to them."""
        with self._lock:
            earlier = list(self._played)
            self._played.append(facts)
            return earlier

    @property
    def evaluation_round(self) -> int | None:
        return None if self.round is None else self.round.evaluation_round

    def start(self, round_: RunnerRound | None, *, inbox=None, label_iteration: int | None = None,
              scenarios: list[tuple[str, bytes]] = ()) -> None:
        """A new round: its message, where to deliver, the label and this runner's scenarios."""
        with self._lock:
            self.round, self.label_iteration, self.inbox = round_, label_iteration, inbox
            self._scenarios, self._next = list(scenarios), 0
            self._played = []

    def next_scenario(self) -> tuple[str, bytes] | None:
        """The next scenario to play in this round (cycling), None without scenarios."""
        with self._lock:
            if not self._scenarios:
                return None
            scenario = self._scenarios[self._next % len(self._scenarios)]
            self._next += 1
            return scenario


_THIS_PROCESS = RunnerState()


def this_process() -> RunnerState:
    """The round state of this process (an eval runner's; empty elsewhere)."""
    return _THIS_PROCESS
