"""The metrics of ``task: embedding`` (a model that maps each input to a vector, compared by
cosine similarity): per-sample cosine against the reference, and the semantic check.

Parity of embeddings is per sample: one cosine per row between the reference's vector and the
candidate's, gated on its minimum (``min_sample_cosine``) and its mean (``min_mean_cosine``).
A single cosine over the whole flattened output, as other outputs get, hides one bad row among
many good ones.

The semantic check reads the validation labels as groups: samples with the same label say the
same thing (a sentence and its paraphrase), samples with different labels are unrelated. For
every triplet (anchor, a sample of its group, a sample of another group), a model either ranks
the similar one above the unrelated one by cosine or not; ``ranking_agreement`` is the share of
triplets the candidate orders exactly as the reference does (gate ``min_ranking_agreement``),
and ``ranking`` the share a model orders as the labels say.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shipyard.errors import DataError


def sample_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """One cosine per row of two ``[N, ...]`` outputs (rows flattened); a row that is zero in
    both counts as 1, zero in one of them as 0."""
    r = reference.reshape(len(reference), -1).astype(np.float64)
    c = candidate.reshape(len(candidate), -1).astype(np.float64)
    norms = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
    dots = np.einsum("ij,ij->i", r, c)
    both_zero = (np.linalg.norm(r, axis=1) == 0) & (np.linalg.norm(c, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    return np.where(both_zero, 1.0, cosines)


def _similarities(embeddings: np.ndarray) -> np.ndarray:
    rows = embeddings.reshape(len(embeddings), -1).astype(np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit = rows / np.where(norms > 0, norms, 1.0)
    return unit @ unit.T


def _orders(similarity: np.ndarray, triplets: np.ndarray) -> np.ndarray:
    anchor, similar, unrelated = triplets.T
    return similarity[anchor, similar] > similarity[anchor, unrelated]


def triplets(groups: np.ndarray) -> np.ndarray:
    """Every (anchor, same-group sample, other-group sample) as index rows ``[T, 3]``;
    DataError when no group has two samples (nothing is similar to anything)."""
    groups = groups.reshape(-1)
    rows = []
    for anchor in range(len(groups)):
        same = np.flatnonzero(groups == groups[anchor])
        other = np.flatnonzero(groups != groups[anchor])
        for similar in same[same != anchor]:
            block = np.empty((len(other), 3), dtype=np.int64)
            block[:, 0], block[:, 1], block[:, 2] = anchor, similar, other
            rows.append(block)
    if not rows:
        raise DataError(
            "task: embedding reads the labels as groups of similar samples, but no label is "
            "shared by two samples: give each pair of similar texts the same label"
        )
    return np.concatenate(rows)


@dataclass(frozen=True)
class Ranking:
    """The semantic check of two embeddings over labelled groups (see the module)."""

    triplets: int
    agreement: float  # share ordered as the reference orders them
    reference: float  # share the reference orders as the labels say
    candidate: float


def ranking(reference: np.ndarray, candidate: np.ndarray, groups: np.ndarray) -> Ranking:
    """Compare how ``reference`` and ``candidate`` embeddings order every triplet."""
    index = triplets(groups)
    ref = _orders(_similarities(reference), index)
    cand = _orders(_similarities(candidate), index)
    return Ranking(len(index), float(np.mean(ref == cand)), float(ref.mean()), float(cand.mean()))
