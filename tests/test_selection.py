"""recording.select (eval_recorder.selection): the option read, and which episodes of a round
become videos, with the reason each was chosen."""

from __future__ import annotations

import pytest

from eval_recorder.selection import ALL, Chosen, EpisodeFacts, Rule, choose, parse_select


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
