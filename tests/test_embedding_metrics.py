"""task: embedding: per-sample cosine (min and mean, with their gates) and the ranking check
over labelled groups, on small embeddings whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from shipyard.embedding_metrics import ranking, sample_cosines, triplets
from shipyard.errors import DataError
from shipyard.validate import Gates, build_report

# Four unit vectors: 0 and 1 are a pair (close), 2 and 3 unrelated to them and each other.
REFERENCE = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
GROUPS = np.array([7, 7, 8, 9])


def test_sample_cosines_are_per_row() -> None:
    candidate = REFERENCE.copy()
    candidate[3] = [0.0, 1.0, 1.0]  # one row off by 45 degrees
    cosines = sample_cosines(REFERENCE, candidate)
    np.testing.assert_allclose(cosines, [1, 1, 1, np.sqrt(0.5)])
    assert sample_cosines(np.zeros((1, 3)), np.zeros((1, 3))).tolist() == [1.0]
    assert sample_cosines(np.zeros((1, 3)), np.ones((1, 3))).tolist() == [0.0]


def test_triplets_pair_each_anchor_with_its_group_against_the_others() -> None:
    rows = triplets(GROUPS)
    assert rows.tolist() == [[0, 1, 2], [0, 1, 3], [1, 0, 2], [1, 0, 3]]
    with pytest.raises(DataError, match="no label is shared by two samples"):
        triplets(np.arange(4))


def test_ranking_agreement_counts_the_triplets_ordered_like_the_reference() -> None:
    same = ranking(REFERENCE, REFERENCE * 3, GROUPS)
    assert (same.triplets, same.agreement, same.reference, same.candidate) == (4, 1.0, 1.0, 1.0)
    swapped = REFERENCE.copy()
    swapped[1] = [0.0, 0.2, 1.0]  # 1 now sits next to 3, not 0
    check = ranking(REFERENCE, swapped, GROUPS)
    assert check.candidate < 1.0 and check.agreement == check.candidate


def test_embedding_gates_judge_each_row_and_the_ranking() -> None:
    candidate = REFERENCE + np.array([0.0, 0.0, 0.0, 0.3])[:, None] * [[0, 1, 0]]
    gates = Gates(min_sample_cosine=0.99, min_mean_cosine=0.9, min_ranking_agreement=1.0)
    report = build_report(
        "ref", "cand", {"e": REFERENCE}, {"e": candidate}, GROUPS, gates, task="embedding"
    )
    out = report.outputs[0]
    assert out.sample_cosine_min == pytest.approx(1 / np.sqrt(1.09))
    assert out.top1_agreement is None  # an embedding's largest element means nothing
    verdicts = {g.gate: g.passed for g in report.gates}
    assert verdicts == {
        "nonfinite": True,
        "min_sample_cosine": False,  # row 3: 0.958
        "min_mean_cosine": True,
        "min_ranking_agreement": True,
    }
    assert report.ranking_agreement == 1.0 and report.ranking_triplets == 4
    unlabelled = build_report("ref", "cand", {"e": REFERENCE}, {"e": REFERENCE}, None, gates)
    ranking_gate = next(g for g in unlabelled.gates if g.gate == "min_ranking_agreement")
    assert not ranking_gate.passed and ranking_gate.value is None  # not measured: fails
