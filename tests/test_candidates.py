"""Per-class candidates: top-n before decoding, class-wise NMS, top-k (rpn_lib.candidates)."""

from __future__ import annotations

import pytest
import torch

from rpn_lib.anchors import anchor_grid
from rpn_lib.boxes import BoxCoder, nms
from rpn_lib.candidates import select_candidates, top_class_probabilities
from rpn_lib.landmarks import EYES

K = 5


def planted(n_anchors: int) -> torch.Tensor:
    logits = torch.zeros(n_anchors, K + 1)
    logits[:, 0] = 5.0  # background everywhere
    return logits


class CountingCoder(BoxCoder):
    """A coder that records how many boxes it decoded."""

    def __init__(self) -> None:
        super().__init__()
        self.decoded = 0

    def decode(self, anchors: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        self.decoded += anchors.shape[0]
        return super().decode(anchors, deltas)


def test_top_k_after_nms_and_decoding() -> None:
    anchors = anchor_grid((6, 6, 6), 4, (8.0, 12.0))  # A = 8
    n = anchors.shape[0]
    logits = planted(n)
    deltas = torch.zeros(n, 6)
    # class 2 (detector class 3): the best anchor, a near-duplicate of it, and a far one
    best, dup, far = 0, 1, n - 1  # anchors 0 and 1 share a cell (8^3 vs 8x8x12: IoU 2/3)
    logits[best, 3], logits[dup, 3], logits[far, 3] = 12.0, 11.0, 10.0
    deltas[far] = torch.tensor([0.5, 0.0, -0.25, 0.1, 0.0, 0.0])
    coder = CountingCoder()
    out = select_candidates(logits, deltas, anchors, coder, pre_nms_top_n=16, nms_iou=0.3, top_k=2)
    assert len(out) == K
    assert coder.decoded == 16 * K  # only the top-n anchors of each class were decoded
    boxes, scores, idx = out[2]
    assert idx.tolist() == [best, far]  # the duplicate was suppressed
    probs = torch.softmax(logits, dim=1)
    torch.testing.assert_close(scores, probs[[best, far], 3])
    torch.testing.assert_close(boxes[0], anchors[best])
    torch.testing.assert_close(boxes[1], BoxCoder().decode(anchors[far:far + 1], deltas[far:far + 1])[0])
    for c, (b, s, i) in enumerate(out):
        assert b.shape == (2, 6) and s.shape == (2,) and i.dtype == torch.long
        assert s[0] >= s[1]
    # without NMS (threshold 1) the duplicate comes second
    out = select_candidates(logits, deltas, anchors, BoxCoder(), pre_nms_top_n=16, nms_iou=1.0, top_k=2)
    assert out[2][2].tolist() == [best, dup]


def test_matches_brute_force_when_every_anchor_is_considered() -> None:
    gen = torch.Generator().manual_seed(0)
    anchors = anchor_grid((3, 3, 3), 4, (6.0, 9.0))
    n = anchors.shape[0]
    logits = torch.randn(n, K + 1, generator=gen) * 2
    deltas = torch.randn(n, 6, generator=gen) * 0.2
    coder = BoxCoder()
    out = select_candidates(logits, deltas, anchors, coder, pre_nms_top_n=n, nms_iou=0.4, top_k=3)
    probs = torch.softmax(logits, dim=1)
    boxes = coder.decode(anchors, deltas)
    for c in range(K):
        keep = nms(boxes, probs[:, c + 1], 0.4)[:3]
        assert out[c][2].tolist() == keep.tolist()
        torch.testing.assert_close(out[c][0], boxes[keep])


def test_few_anchors() -> None:
    anchors = anchor_grid((1, 1, 1), 4, (8.0,))  # a single anchor
    out = select_candidates(planted(1), torch.zeros(1, 6), anchors, BoxCoder(), pre_nms_top_n=64, top_k=2)
    assert all(b.shape == (1, 6) for b, _, _ in out)


def reference_top(logits: torch.Tensor, top_n: int, pool_eyes: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain computation: softmax over classes, then one topk over all anchors."""
    probs = torch.softmax(logits.float(), dim=1)[:, 1:].T.clone()
    if pool_eyes:
        probs[EYES[0]] = probs[EYES[1]] = probs[EYES[0]] + probs[EYES[1]]
    return torch.topk(probs, top_n, dim=1)


@pytest.mark.parametrize("n", [4096, 4096 + 6, 37, 64])  # block of 64, of 2 (gcd), of 1, one block
@pytest.mark.parametrize("pool_eyes", [False, True])
def test_top_class_probabilities_matches_softmax_topk(n: int, pool_eyes: bool) -> None:
    g = torch.Generator().manual_seed(n)
    logits = torch.randn(n, K + 1, generator=g) * 3
    logits[:, 0] += 4
    top_n = min(16, n)
    values, indices = top_class_probabilities(logits, top_n, pool_eyes)
    ref = reference_top(logits, top_n, pool_eyes)
    assert values.shape == indices.shape == (K, top_n) and values.dtype == torch.float32
    assert torch.equal(indices, ref.indices)  # continuous values: no ties
    torch.testing.assert_close(values, ref.values)


def test_top_class_probabilities_ties_and_bf16() -> None:
    """bf16 logits take few distinct values: many probabilities tie. The kept values are the
    true top values, ties are ordered by anchor index, and every index carries its value."""
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(8192, K + 1, generator=g)).round().bfloat16()  # integers: heavy ties
    values, indices = top_class_probabilities(logits, 32)
    ref = reference_top(logits, 32)
    torch.testing.assert_close(values, ref.values)
    probs = torch.softmax(logits.float(), dim=1)[:, 1:].T
    torch.testing.assert_close(torch.gather(probs, 1, indices), values)
    for c in range(K):
        same = values[c][1:] == values[c][:-1]
        assert bool((indices[c][1:][same] > indices[c][:-1][same]).all())
        assert indices[c].unique().numel() == 32


def test_top_class_probabilities_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="top_n"):
        top_class_probabilities(torch.zeros(10, K + 1), 11)
    with pytest.raises(ValueError, match="cls_logits"):
        top_class_probabilities(torch.zeros(10), 1)
