"""Rankings into pairs, scores and agreement: ties, unusable candidates, several labelers, bad rankings."""

from __future__ import annotations

import pytest

from kuberlhf.errors import DataError
from kuberlhf.feedback.rankings import Ranking, agreement, check_ranking, kendall_tau_b, ordered_pairs, scores, to_pairs


def r(tiers, task="t", labeler="a", unusable=(), skipped=False):
    return Ranking(task, labeler, tuple(tuple(t) if isinstance(t, list) else (t,) for t in tiers), tuple(unusable),
                   skipped)


def test_a_full_ranking_of_k_gives_every_k_choose_2_pair_best_first():
    assert ordered_pairs(r([2, 0, 3, 1])) == [(0, 1), (0, 3), (2, 0), (2, 1), (2, 3), (3, 1)]
    assert len(ordered_pairs(r(list(range(9))))) == 36  # InstructGPT's K = 9


def test_ties_make_no_pair_or_drop_the_ranking():
    tied = r([2, [0, 3], 1])
    assert ordered_pairs(tied, ties="skip") == [(0, 1), (2, 0), (2, 1), (2, 3), (3, 1)]
    assert ordered_pairs(tied, ties="drop") == []
    assert tied.has_ties and not r([0, 1]).has_ties


def test_unusable_candidates_rank_last_or_join_no_pair():
    ranking = r([1, 0], unusable=[2, 3])
    assert ordered_pairs(ranking, unusable="last") == [(0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]
    assert ordered_pairs(ranking, unusable="drop") == [(1, 0)]
    assert scores(ranking, 4, "last") == [0.5, 1.0, 0.0, 0.0]
    assert scores(ranking, 4, "drop") == [0.0, 1.0, None, None]


def test_skipped_tasks_give_no_pairs_and_no_scores():
    skipped = r([], skipped=True)
    assert ordered_pairs(skipped) == [] and scores(skipped, 3) == [None, None, None]


def test_majority_merge_keeps_the_pairs_most_labelers_agree_on():
    rankings = [r([0, 1, 2], labeler="a"), r([0, 1, 2], labeler="b"), r([1, 0, 2], labeler="c")]
    pairs = {(p.chosen, p.rejected): p for p in to_pairs(rankings, merge="majority")}
    assert set(pairs) == {(0, 1), (0, 2), (1, 2)}
    assert pairs[(0, 1)].agreement == pytest.approx(2 / 3) and pairs[(0, 2)].agreement == 1.0
    assert sorted(pairs[(0, 1)].labelers) == ["a", "b"]
    even = to_pairs([r([0, 1], labeler="a"), r([1, 0], labeler="b")], merge="majority")
    assert even == []  # a split vote teaches nothing
    separate = to_pairs([r([0, 1], labeler="a"), r([1, 0], labeler="b")], merge="separate")
    assert [(p.chosen, p.rejected, p.labelers) for p in separate] == [(0, 1, ["a"]), (1, 0, ["b"])]


def test_kendall_tau_b_matches_known_values():
    assert kendall_tau_b([0, 1, 2, 3], [0, 1, 2, 3]) == 1.0
    assert kendall_tau_b([0, 1, 2, 3], [3, 2, 1, 0]) == -1.0
    assert kendall_tau_b([0, 1, 2, 3], [1, 0, 2, 3]) == pytest.approx(4 / 6)  # one of six pairs swapped
    # with ties (SciPy's kendalltau([1, 2, 2, 3], [1, 2, 3, 4]) = 0.9128709...)
    assert kendall_tau_b([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9128709291752769)
    assert kendall_tau_b([1, 1], [0, 1]) is None


def test_agreement_counts_only_tasks_with_several_labelers():
    rankings = [r([0, 1, 2, 3], task="x", labeler="a"), r([1, 0, 2, 3], task="x", labeler="b"),
                r([0, 1, 2, 3], task="y", labeler="a"), r([0, 1, 2, 3], task="y", labeler="b"),
                r([3, 2, 1, 0], task="z", labeler="a")]
    out = agreement(rankings)
    assert out["tasks_with_several_labelers"] == 2 and out["compared_pairs"] == 12
    assert out["pairwise_agreement"] == pytest.approx(11 / 12)
    assert out["kendall_tau"] == pytest.approx((4 / 6 + 1) / 2)


@pytest.mark.parametrize(("ranking", "k", "message"), [
    (r([0, 5]), 4, "unknown candidate 5"),
    (r([0, 1, 0]), 4, "candidate 0 is ranked twice"),
    (r([0, 1], unusable=[1]), 4, "candidate 1 is ranked twice"),
    (r([1]), 4, "ranks 1 candidate"),
    (r([0, 1]), 1, "1 candidate"),
    (r(["c0", 1]), 4, "unknown candidate 'c0'"),
    (r([[], 0, 1]), 4, "an empty tie"),
])
def test_bad_rankings_name_the_task_and_the_fault(ranking, k, message):
    with pytest.raises(DataError, match=f"task t.*{message}"):
        check_ranking(ranking, k)


def test_a_label_studio_export_becomes_rankings_with_buckets_skips_and_labelers():
    from kuberlhf.feedback.rounds import rankings_from_export

    def task(tid, annotations, kid="t1"):
        return {"id": tid, "data": {"kuberlhf_id": kid, "items": [{"id": f"c{i}"} for i in range(3)]},
                "annotations": annotations}

    ranked = {"completed_by": 1, "result": [{"type": "ranker", "value": {"ranker": {"rank": ["c2", "c0", "c1"]}}}]}
    bucketed = {"completed_by": 2, "result": [{"type": "ranker",
                                               "value": {"ranker": {"ranked": ["c1", "c0"], "unusable": ["c2"]}}}]}
    skipped = {"completed_by": 1, "was_cancelled": True, "result": []}
    out = rankings_from_export([task(10, [ranked, bucketed]), task(11, [skipped], "t2"), task(12, [], "t3")],
                               {"t1", "t2", "t3"}, {1: "ann@example.com", 2: "bob@example.com"})
    assert [(r.task, r.labeler, r.tiers, r.unusable, r.skipped) for r in out] == [
        ("t1", "ann@example.com", ((2,), (0,), (1,)), (), False),
        ("t1", "bob@example.com", ((1,), (0,)), (2,), False),
        ("t2", "ann@example.com", (), (), True)]
    with pytest.raises(DataError, match="Label Studio task 10: annotated, but not a task of these candidates"):
        rankings_from_export([task(10, [ranked])], {"t9"}, {})
    bad = {"completed_by": 1, "result": [{"type": "ranker", "value": {"ranker": {"rank": ["c0", "c7"]}}}]}
    with pytest.raises(DataError, match="task t1 .*unknown candidate 7"):
        rankings_from_export([task(10, [bad])], {"t1"}, {})
    empty = {"completed_by": 1, "result": []}
    with pytest.raises(DataError, match="task t1 .*holds no ranking"):
        rankings_from_export([task(10, [empty])], {"t1"}, {})


def test_a_labeler_who_ranks_a_task_twice_is_refused():
    with pytest.raises(DataError, match="task t: labeler a ranks it twice"):
        to_pairs([r([0, 1], labeler="a"), r([0, 1], labeler="a"), r([1, 0], labeler="b")])


def test_an_all_unusable_ranking_scores_every_candidate_zero():
    assert scores(r([], unusable=[0, 1]), 3) == [0.0, 0.0, None]


def test_buckets_with_unmoved_items_and_labelers_as_text_are_read():
    from kuberlhf.feedback.rounds import rankings_from_export

    value = {"ranker": {"ranked": ["c1", "c0"], "unusable": ["c3"], "_": ["c2"]}}
    task = {"id": 5, "data": {"kuberlhf_id": "t", "items": [{"id": f"c{i}"} for i in range(4)]},
            "annotations": [{"completed_by": "carol@example.com", "result": [{"type": "ranker", "value": value}]}]}
    (ranking,) = rankings_from_export([task], {"t"}, {})
    assert (ranking.labeler, ranking.tiers, ranking.unusable) == ("carol@example.com", ((1,), (0,)), (3,))
    assert (2, 0) not in ordered_pairs(ranking) and (0, 3) in ordered_pairs(ranking)  # c2 unranked: no pair


def test_prompt_batches_hold_whole_prompts_and_follow_the_epoch_they_are_set_to():
    from kuberlhf.stages.reward import PromptBatchSampler

    prompts = [p for p in "abcdefg" for _ in range(3)]
    sampler = PromptBatchSampler(prompts, 2, seed=0)
    first = list(sampler)
    assert len(first) == len(sampler) == 4
    assert sorted(i for batch in first for i in batch) == list(range(len(prompts)))
    assert all(len({prompts[i] for i in batch}) <= 2 and len(batch) % 3 == 0 for batch in first)
    assert list(sampler) == first  # the same epoch, the same order (a resumed run skips the same batches)
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and list(PromptBatchSampler(prompts, 2, seed=0).__iter__()) == first


def test_pairs_with_an_empty_or_identical_side_are_dropped_and_counted():
    """An empty candidate (the policy stopped at once) makes no pair the preference loader accepts."""
    from kuberlhf.data.pairs import unusable_pair
    from kuberlhf.feedback.rounds import ImportSettings, build_dataset

    assert unusable_pair(" a", " b") is None
    assert unusable_pair(" a", " a") == "identical" and unusable_pair(" a", "  ") == "empty"
    rows = [{"id": "t1", "prompt": "Q", "candidates": [" good", "", " ok", " ok"]}]
    (pairs, _), _, metrics = build_dataset(rows, [Ranking("t1", "ann", ((0,), (1,), (2,), (3,)))], ImportSettings())
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(" good", " ok"), (" good", " ok")]
    assert metrics["empty_pairs_dropped"] == 3 and metrics["identical_pairs_dropped"] == 1
