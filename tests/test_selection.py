"""recording.select (eval_recorder.selection): the option read, and which episodes of a round
become videos, with the reason each was chosen."""

from __future__ import annotations

import pytest

from eval_recorder.selection import ALL, Chosen, EpisodeFacts, Rule, choose, may_be_chosen, parse_select


def flatland_round():
    """6 episodes of 5 trains: (arrived, return)."""
    facts = [(5, -10.0), (3, -40.0), (3, -25.0), (5, -8.0), (1, -90.0), (5, -8.0)]
    return [EpisodeFacts(index=i, episode_return=r, completion=a / 5, agents_arrived=a, num_agents=5)
            for i, (a, r) in enumerate(facts)]


def gym_round():
    return [EpisodeFacts(index=i, episode_return=r) for i, r in enumerate([12.0, 30.0, 9.0, 30.0, 9.0])]


def test_all_is_one_rule_and_a_list_keeps_its_order():
    assert parse_select("all") == (Rule(ALL, 0),)
    assert parse_select(" worst:1, best:2 ,failed:3,first:4") == (
        Rule("worst", 1), Rule("best", 2), Rule("failed", 3), Rule("first", 4))


@pytest.mark.parametrize(("text", "message"), [
    ("", "recording.select is empty; write all, or a list such as worst:1,best:1."),
    ("wost:1", "recording.select has 'wost:1': 'wost' is not one of all, worst, best, failed, first; "
               "write all, or a list such as worst:1,best:1."),
    ("worst", "recording.select has 'worst': worst needs a count, e.g. worst:1."),
    ("best:0", "recording.select has 'best:0': the count must be a whole number of at least 1, e.g. best:1."),
    ("first:two", "recording.select has 'first:two': the count must be a whole number of at least 1, e.g. first:1."),
    ("failed:-1", "recording.select has 'failed:-1': the count must be a whole number of at least 1, e.g. failed:1."),
    ("all:2", "recording.select has 'all:2': all takes no count and stands alone; "
              "write all, or a list such as worst:1,best:1."),
    ("worst:1,all", "recording.select has 'worst:1,all': all takes no count and stands alone; "
                    "write all, or a list such as worst:1,best:1."),
    ("worst:1,worst:2", "recording.select names worst twice; give each kind once, e.g. worst:2."),
    ("worst:1,", "recording.select has '': '' is not one of all, worst, best, failed, first; "
                 "write all, or a list such as worst:1,best:1."),
])
def test_a_wrong_select_says_what_is_wrong_and_what_is_allowed(text, message):
    with pytest.raises(ValueError) as refused:
        parse_select(text)
    assert str(refused.value) == message


def test_worst_and_best_go_by_completion_then_return():
    assert choose("worst:2,best:2", flatland_round()) == [
        Chosen(1, ("2nd worst completion of 6",)),  # 3 of 5 at -40 is below 3 of 5 at -25
        Chosen(3, ("best completion of 6",)),       # 5 of 5 at -8, the tie with episode 5 goes to the lower index
        Chosen(4, ("worst completion of 6",)),
        Chosen(5, ("2nd best completion of 6",)),
    ]


def test_envs_without_completion_go_by_return_ties_to_the_lower_index():
    assert choose("worst:1,best:1", gym_round()) == [
        Chosen(1, ("best return of 5",)), Chosen(2, ("worst return of 5",))]


def test_an_episode_two_rules_pick_carries_both_reasons():
    chosen = choose("first:2,best:1", gym_round())
    assert chosen == [Chosen(0, ("first 2 of 5",)), Chosen(1, ("first 2 of 5", "best return of 5"))]
    assert chosen[1].reason == "first 2 of 5; best return of 5"


def test_failed_takes_the_failed_episodes_in_order_saying_how_many_trains_arrived():
    assert choose("failed:2", flatland_round()) == [
        Chosen(1, ("failed: 3 of 5 trains arrived",)), Chosen(2, ("failed: 3 of 5 trains arrived",))]
    one_train = [EpisodeFacts(index=0, episode_return=-3.0, completion=0.0, agents_arrived=0, num_agents=1)]
    assert choose("failed:1", one_train) == [Chosen(0, ("failed: 0 of 1 train arrived",))]


def test_failed_on_an_env_without_trains_is_refused():
    with pytest.raises(ValueError) as refused:
        choose("failed:1", gym_round())
    assert str(refused.value) == ("recording.select has failed, but this env's episodes do not report trains arrived "
                                  "(only Flatland's do); choose with worst, best or first instead.")


def test_counts_larger_than_the_round_take_the_whole_round():
    assert [c.index for c in choose("worst:50", gym_round())] == [0, 1, 2, 3, 4]
    assert choose("first:9", gym_round())[0] == Chosen(0, ("first 5 of 5",))
    assert [c.index for c in choose("failed:9", flatland_round())] == [1, 2, 4]


def test_all_takes_every_episode_and_an_empty_round_none():
    assert choose("all", gym_round()) == [Chosen(i, ("all 5",)) for i in range(5)]
    assert choose("worst:1,best:1", []) == []


# ---- the eval runner's side: which episodes it draws (may_be_chosen) ----------------------


def runner_draws(rules: str, episodes: list[EpisodeFacts]) -> list[int]:
    """The indices a runner that played ``episodes`` in this order draws."""
    return [this.index for at, this in enumerate(episodes) if may_be_chosen(rules, episodes[:at], this)]


@pytest.mark.parametrize(("rules", "drawn"), [
    ("worst:1", [0, 1, 4]),                 # each worse (by completion) than every earlier one
    ("best:1", [0, 3, 5]),                  # index 5 ties index 3 (5 trains, -8.0): an equal one is drawn too
    ("worst:1,best:1", [0, 1, 3, 4, 5]),
    ("worst:2", [0, 1, 2, 4]),
    ("failed:1", [1]),
    ("failed:2", [1, 2]),
    ("first:2", [0, 1]),
    ("all", [0, 1, 2, 3, 4, 5]),
])
def test_a_runner_draws_every_episode_its_rules_may_still_choose(rules, drawn):
    episodes = flatland_round()
    episodes[5] = EpisodeFacts(index=5, episode_return=-8.0, completion=1.0, agents_arrived=5, num_agents=5)
    assert runner_draws(rules, episodes) == drawn
    # whatever the round's other episodes, what the driver chooses of this runner's was drawn
    chosen = {found.index for found in choose(rules, episodes)}
    assert chosen <= set(drawn)


def test_what_the_driver_chooses_from_several_runners_was_drawn_on_its_runner():
    """Rounds of 3 runners' episodes, interleaved as they arrive: every chosen one was drawn."""
    import random

    rng = random.Random(7)
    for _ in range(200):
        runners = [[(rng.randint(0, 3), float(rng.randint(-6, 0))) for _ in range(rng.randint(1, 5))] for _ in range(3)]
        facts = [[EpisodeFacts(index=0, episode_return=r, completion=a / 3, agents_arrived=a, num_agents=3)
                  for a, r in episodes] for episodes in runners]
        drawn, arrived = set(), []
        for runner, episodes in enumerate(facts):
            for at, this in enumerate(episodes):
                if may_be_chosen("worst:2,best:1,failed:1", episodes[:at], this):
                    drawn.add((runner, at))
        queues = [list(enumerate(episodes)) for episodes in facts]
        while any(queues):  # each runner's episodes in its order, runners interleaved at random
            runner = rng.choice([i for i, queue in enumerate(queues) if queue])
            at, this = queues[runner].pop(0)
            arrived.append(((runner, at), this))
        round_ = [EpisodeFacts(index=i, episode_return=f.episode_return, completion=f.completion,
                               agents_arrived=f.agents_arrived, num_agents=f.num_agents)
                  for i, (_, f) in enumerate(arrived)]
        for found in choose("worst:2,best:1,failed:1", round_):
            assert arrived[found.index][0] in drawn


def test_a_runner_without_completion_ranks_by_return():
    episodes = gym_round()  # returns 12, 30, 9, 30, 9
    assert runner_draws("worst:1", episodes) == [0, 2, 4]  # 9 again: a tie is drawn
    assert runner_draws("best:1", episodes) == [0, 1, 3]
