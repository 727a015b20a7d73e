"""How close half-precision labels must stay to float32's."""
from __future__ import annotations

import numpy as np
import torch

MARGIN = 0.01
"""A decision is clear where the two best scores are more than this fraction of the score range apart."""


def clear_decisions(ref_scores: torch.Tensor, margin: float = MARGIN) -> np.ndarray:
    """Pixels (H x W bool) whose label no float rounding can change: the two best of the C x H x W
    reference scores differ by more than ``margin`` of the score range."""
    top2 = ref_scores.topk(2, dim=0).values
    return ((top2[0] - top2[1]) > margin * float(ref_scores.amax() - ref_scores.amin())).cpu().numpy()


def assert_labels_agree_beyond_ties(labels: np.ndarray, ref: np.ndarray, ref_scores: torch.Tensor) -> None:
    """float32 run another way (other threads, blocking, batch): every clear decision is the same;
    near-ties may go either way."""
    clear = clear_decisions(ref_scores)
    assert clear.mean() > 0.5  # the criterion covers most of the image
    np.testing.assert_array_equal(labels[clear], ref[clear])


def assert_low_precision_labels(labels: np.ndarray, ref: np.ndarray, ref_scores: torch.Tensor) -> None:
    """Half precision may flip near-ties, never a clear decision: where float32's two best scores are
    more than 1% of the score range apart, labels agree; over all pixels, at least 98% do."""
    clear = clear_decisions(ref_scores)
    assert clear.mean() > 0.5  # the criterion covers most of the image
    assert (labels[clear] == ref[clear]).mean() >= 0.999
    assert (labels == ref).mean() >= 0.98


# Two float32 computations of one prediction that are blocked differently (batch size, band or window
# count, thread count, the CPU's vector width: AVX2 or AVX-512) add in another order and differ by about
# 1e-6 of the score range. Where the two best scores are closer than this fraction of the range, the
# label may go either way; everywhere else it must not change.
TIE_MARGIN = 1e-4


def clear_pixels(scores: np.ndarray | torch.Tensor, margin: float = TIE_MARGIN) -> np.ndarray:
    """Pixels whose label no float32 rounding can flip: the two best of ``scores`` (C x H x W) are more
    than ``margin`` of the score range apart."""
    s = torch.as_tensor(np.asarray(scores, dtype=np.float32) if isinstance(scores, np.ndarray) else scores).float()
    top2 = s.topk(2, dim=0).values
    clear = ((top2[0] - top2[1]) > margin * float(s.amax() - s.amin())).cpu().numpy()
    assert clear.mean() > 0.9, f"only {clear.mean():.1%} of the pixels are clear decisions"
    return clear


def assert_same_labels(labels: np.ndarray, ref_labels: np.ndarray, ref_scores: np.ndarray | torch.Tensor) -> None:
    """``labels`` are those of ``ref_labels`` wherever the reference's decision is clear (near-ties may flip
    when the computation is blocked differently; see ``TIE_MARGIN``)."""
    labels, ref_labels = np.asarray(labels), np.asarray(ref_labels)
    assert labels.shape == ref_labels.shape
    clear = clear_pixels(ref_scores)
    np.testing.assert_array_equal(labels[clear], ref_labels[clear])


def assert_same_prediction(labels: np.ndarray, ref) -> None:
    """``labels`` against a ``Prediction`` that kept its scores (``assert_same_labels``)."""
    assert ref.scores is not None, "the reference prediction must keep its scores"
    assert_same_labels(labels, ref.labels, ref.scores)
