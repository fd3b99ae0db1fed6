"""How finished episodes travel from eval runners to the driver: the episode inbox.

``Inbox`` is the driver's handle on a small Ray actor that lives on the driver's node and
keeps the episodes eval runners finished until the driver takes them; an eval runner hands
each episode to it with ``deliver`` when the episode ends.

Why an actor: an episode must survive its runner. Eval runners may sit on other machines
(no shared filesystem; only the driver writes the video folder), and a runner may die
in the middle of a round. So each finished episode (its mp4 bytes and facts) goes, as
soon as it ends, to an actor owned by the driver and pinned to the driver's node; the
driver takes them as they arrive. The actor holds only what the driver has not taken yet,
and dies with the driver.
"""

from __future__ import annotations

import logging
import threading
import time

import ray

__all__ = ["Inbox", "deliver", "find_inbox"]

logger = logging.getLogger(__name__)

# How long an eval runner waits for the inbox to take an episode before giving up on it.
DELIVER_TIMEOUT_S = 120.0


@ray.remote(num_cpus=0, max_concurrency=8)
class _InboxActor:
    def __init__(self) -> None:
        self._items: list = []
        self._delivered = 0
        self._changed = threading.Condition()
        self._round = None

    def set_round(self, state) -> None:
        self._round = state

    def round_state(self):
        return self._round

    def put(self, item) -> int:
        with self._changed:
            self._items.append(item)
            self._delivered += 1
            self._changed.notify_all()
            return self._delivered

    def take(self) -> list:
        with self._changed:
            items, self._items = self._items, []
            return items

    def wait(self, delivered: int, timeout_s: float) -> int:
        """Return the number delivered so far once it exceeds ``delivered`` (or after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._delivered <= delivered and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            return self._delivered


class Inbox:
    """The driver's side of the inbox (create it on the driver, after ``ray.init``).

    ``name``, if given, names the actor so that an eval runner that was restarted after
    the driver last spoke to it can find it (``find_inbox``). The inbox also keeps the
    state of the current evaluation round (``set_round``) for such runners."""

    def __init__(self, name: str | None = None) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = ray.get_runtime_context().get_node_id()
        options = dict(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False))
        if name is not None:
            options.update(name=name, get_if_exists=True)
        self.actor = _InboxActor.options(**options).remote()

    def set_round(self, state) -> None:
        ray.get(self.actor.set_round.remote(state))

    def take(self, timeout_s: float | None = None) -> list:
        """Everything delivered and not taken yet, in order of delivery."""
        return ray.get(self.actor.take.remote(), timeout=timeout_s)

    def wait(self, delivered: int, timeout_s: float) -> int:
        """Block until more than ``delivered`` items arrived in all (or ``timeout_s``); the count."""
        return ray.get(self.actor.wait.remote(delivered, timeout_s), timeout=timeout_s + 30)

    def close(self) -> None:
        ray.kill(self.actor, no_restart=True)


def find_inbox(name: str):
    """Runs on an eval runner: the inbox actor named ``name``, or None."""
    try:
        return ray.get_actor(name)
    except ValueError:
        return None


def deliver(actor, item) -> bool:
    """Runs on an eval runner: hand ``item`` to the inbox ``actor``; False if it could not."""
    try:
        ray.get(actor.put.remote(item), timeout=DELIVER_TIMEOUT_S)
        return True
    except Exception as error:  # the driver is gone or stuck: nothing else can hold it
        logger.error("could not hand a finished episode to the driver (%s: %s); it is lost",
                     type(error).__name__, error)
        return False
