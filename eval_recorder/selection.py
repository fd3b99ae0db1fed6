"""``recording.select``: which of a round's episodes become videos, decided once all are in.

``parse_select(text)`` reads the option: ``all`` (every episode, the default) or a comma
list of ``kind:count`` rules, kinds ``worst``, ``best`` (by completion, then return; by
return for envs that report no completion), ``failed`` (not every train arrived: Flatland)
and ``first`` (the first episodes of the round). A mistake is a ValueError whose message
says what is wrong and what is allowed.

``choose(rules, episodes)`` takes the round's episodes' facts (``EpisodeFacts``: episode
index, return, and where the env reports them completion, trains arrived, trains) and
returns the episodes to draw, in episode order, each with the reasons it was chosen
("worst return of 20", "best completion of 20", "failed: 3 of 5 trains arrived", "first 2
of 20"). Ties go to the lower episode index; an episode two rules pick carries both
reasons; a count larger than the round takes the whole round. ``failed`` takes the failed
episodes in episode order.

``may_be_chosen(rules, earlier, this)`` is the eval runner's side: whether an episode that
just ended can be among those chosen, whatever the round's other episodes turn out to be,
knowing only the ones played before it on the same runner (in order). A runner draws only
those: an episode of the round's k worst is among the k worst of its own runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = ["ALL", "Chosen", "EpisodeFacts", "KINDS", "Rule", "choose", "may_be_chosen", "parse_select"]

ALL = "all"
KINDS = ("worst", "best", "failed", "first")
_EXAMPLE = "write all, or a list such as worst:1,best:1"


@dataclass(frozen=True)
class Rule:
    kind: str  # one of KINDS, or ALL (count 0)
    count: int


@dataclass(frozen=True)
class EpisodeFacts:
    """What choosing needs of one episode of the round."""

    index: int
    episode_return: float
    completion: float | None = None
    agents_arrived: int | None = None
    num_agents: int | None = None


@dataclass(frozen=True)
class Chosen:
    index: int
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        """The reasons as one caption ("worst return of 20; first 2 of 20")."""
        return "; ".join(self.reasons)


def parse_select(text: str) -> tuple[Rule, ...]:
    """The rules of a ``recording.select`` value (``all``: one Rule(ALL, 0))."""
    parts = [part.strip() for part in str(text).split(",")]
    if not any(parts):
        raise ValueError(f"recording.select is empty; {_EXAMPLE}.")
    rules: list[Rule] = []
    for part in parts:
        kind, colon, count_text = (piece.strip() for piece in part.partition(":"))
        if kind == ALL:
            if colon or len(parts) > 1:
                raise ValueError(f"recording.select has {text!r}: all takes no count and stands alone; {_EXAMPLE}.")
            return (Rule(ALL, 0),)
        if kind not in KINDS:
            raise ValueError(f"recording.select has {part!r}: {kind!r} is not one of all, {', '.join(KINDS)}; "
                             f"{_EXAMPLE}.")
        if not colon:
            raise ValueError(f"recording.select has {part!r}: {kind} needs a count, e.g. {kind}:1.")
        if not count_text.isdigit() or int(count_text) < 1:
            raise ValueError(f"recording.select has {part!r}: the count must be a whole number of at least 1, "
                             f"e.g. {kind}:1.")
        if any(rule.kind == kind for rule in rules):
            raise ValueError(f"recording.select names {kind} twice; give each kind once, e.g. {kind}:2.")
        rules.append(Rule(kind, int(count_text)))
    return tuple(rules)


def choose(rules: Sequence[Rule] | str, episodes: Iterable[EpisodeFacts]) -> list[Chosen]:
    """The episodes ``rules`` (or a ``recording.select`` text) pick, in episode order."""
    if isinstance(rules, str):
        rules = parse_select(rules)
    episodes = sorted(episodes, key=lambda episode: episode.index)
    total = len(episodes)
    reasons: dict[int, list[str]] = {}
    for rule in rules:
        for episode, reason in _pick(rule, episodes, total):
            reasons.setdefault(episode.index, []).append(reason)
    return [Chosen(index, tuple(found)) for index, found in sorted(reasons.items())]


def _pick(rule: Rule, episodes: list[EpisodeFacts], total: int):
    if rule.kind == ALL:
        return [(episode, f"all {total}") for episode in episodes]
    if rule.kind == "first":
        taken = episodes[: rule.count]
        return [(episode, f"first {len(taken)} of {total}") for episode in taken]
    if rule.kind == "failed":
        if any(episode.agents_arrived is None or episode.num_agents is None for episode in episodes):
            raise ValueError("recording.select has failed, but this env's episodes do not report trains arrived "
                             "(only Flatland's do); choose with worst, best or first instead.")
        failed = [episode for episode in episodes if episode.agents_arrived < episode.num_agents][: rule.count]
        return [(episode, f"failed: {episode.agents_arrived} of {episode.num_agents} "
                          f"train{'' if episode.num_agents == 1 else 's'} arrived") for episode in failed]
    by_completion = all(episode.completion is not None for episode in episodes)
    measure = "completion" if by_completion else "return"

    def key(episode: EpisodeFacts):
        score = (episode.completion, episode.episode_return) if by_completion else (episode.episode_return,)
        return score if rule.kind == "worst" else tuple(-value for value in score)

    ranked = sorted(episodes, key=lambda episode: (key(episode), episode.index))[: rule.count]
    return [(episode, f"{_ordinal(rank)}{rule.kind} {measure} of {total}") for rank, episode in enumerate(ranked, 1)]


def _ordinal(rank: int) -> str:
    """'' for 1 ("worst"), '2nd ' for 2 ("2nd worst"), ..."""
    if rank == 1:
        return ""
    suffix = "th" if 10 <= rank % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(rank % 10, "th")
    return f"{rank}{suffix} "


def may_be_chosen(rules: Sequence[Rule] | str, earlier: Sequence[EpisodeFacts], this: EpisodeFacts) -> bool:
    """Whether ``rules`` can choose ``this`` episode in a round that holds it and ``earlier``
    (the episodes played before it on the same eval runner, in order), whatever else the round
    holds. Ties count for ``this`` (an equal episode may come later in the round's order), and
    worst/best are checked by completion and by return, whichever the round ranks by."""
    if isinstance(rules, str):
        rules = parse_select(rules)
    for rule in rules:
        if rule.kind == ALL:
            return True
        if rule.kind == "first" and len(earlier) < rule.count:
            return True
        if rule.kind == "failed":
            if this.agents_arrived is None or this.num_agents is None:
                return True  # the driver says why failed does not apply
            if this.agents_arrived < this.num_agents and sum(map(_failed, earlier)) < rule.count:
                return True
        if rule.kind in ("worst", "best"):
            sign = 1 if rule.kind == "worst" else -1

            def by_return(episode: EpisodeFacts):
                return (sign * episode.episode_return,)

            def by_completion(episode: EpisodeFacts):
                return (sign * episode.completion, sign * episode.episode_return)

            if sum(by_return(episode) < by_return(this) for episode in earlier) < rule.count:
                return True
            if this.completion is not None and sum(by_completion(episode) < by_completion(this) for episode in earlier
                                                   if episode.completion is not None) < rule.count:  # fmt: skip
                return True
    return False


def _failed(episode: EpisodeFacts) -> bool:
    return episode.agents_arrived is not None and episode.num_agents is not None and \
        episode.agents_arrived < episode.num_agents
