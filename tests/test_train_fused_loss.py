"""The fused LM head + soft cross-entropy of packed training (:mod:`jakiro.train.fused_loss`) against the plain
autograd formula: values, input gradients (float64 gradcheck, float32 to 1e-5, bf16 autocast loosely), the target's
labels and the top-k ranks, and the losses of :func:`jakiro.train.losses.draft_losses` either way."""

import pytest
import torch
from torch.nn import functional as F

from jakiro.train.fused_loss import BLOCK, RANK_DEPTH, distill_rows, first_argmax, top_indices
from jakiro.train.losses import draft_losses, soft_cross_entropy
from jakiro.train.metrics import topk_correct


def problem(vocab: int, hidden: int = 16, m: int = 37, dtype=torch.float32, seed: int = 0):
    """(weight [V, H], target [M, H], head-1 rows [M, H], head-2 rows [N2, H], head-2 index [N2] sorted)."""
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(vocab, hidden, generator=g) / hidden ** 0.5).to(dtype)
    target = torch.randn(m, hidden, generator=g).to(dtype) * 2
    rows1 = (target + torch.randn(m, hidden, generator=g).to(dtype)).requires_grad_(True)
    index2 = torch.nonzero(torch.rand(m, generator=g) > 0.3).squeeze(1)  # a sorted subset, as head 2's rows
    rows2 = (target[index2] + torch.randn(len(index2), hidden, generator=g).to(dtype) * 2).requires_grad_(True)
    return weight, target, rows1, rows2, index2


def plain(weight, target, rows1, rows2, index2):
    """The previous code's formula: [N, V] logits, float32 softmax / log-softmax, plain autograd."""
    with torch.no_grad():
        target_logits = F.linear(target, weight).float()
        probs = target_logits.softmax(-1)
        labels = target_logits.argmax(-1)
    logits1, logits2 = F.linear(rows1, weight), F.linear(rows2, weight)
    return (soft_cross_entropy(logits1, probs), soft_cross_entropy(logits2, probs[index2]), labels,
            logits1.detach(), logits2.detach())


def rank_of(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    top = torch.topk(logits, RANK_DEPTH, dim=-1).indices == labels[:, None]
    return torch.where(top.any(-1), top.int().argmax(-1), RANK_DEPTH)


@pytest.mark.parametrize("vocab", [1024, 300])  # a multiple of BLOCK (block-wise argmax / top-k) and not
@pytest.mark.parametrize("chunk", [8, 128])
def test_values_gradients_labels_and_ranks_match_the_plain_formula_in_float32(vocab, chunk):
    weight, target, rows1, rows2, index2 = problem(vocab)
    ce1, ce2, labels, logits1, logits2 = plain(weight, target, rows1, rows2, index2)
    g1, g2 = torch.rand(len(ce1)), torch.rand(len(ce2))  # per-row upstream gradients (loss weights)
    want = torch.autograd.grad((ce1 * g1).sum() + (ce2 * g2).sum(), (rows1, rows2))
    fused = distill_rows(weight, target, [(rows1, torch.arange(len(target))), (rows2, index2)], chunk=chunk)
    torch.testing.assert_close(fused.ce[0], ce1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.ce[1], ce2, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad((fused.ce[0] * g1).sum() + (fused.ce[1] * g2).sum(), (rows1, rows2))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert torch.equal(fused.labels, labels)
    assert torch.equal(fused.ranks[0], rank_of(logits1, labels))
    assert torch.equal(fused.ranks[1], rank_of(logits2, labels[index2]))
    assert 0 < int((fused.ranks[0] < RANK_DEPTH).sum()) < len(labels)  # some hits, some misses: a real check


def test_gradient_passes_gradcheck_in_float64():
    weight, target, rows1, rows2, index2 = problem(200, hidden=6, m=9, dtype=torch.float64, seed=3)

    def loss(r1, r2):
        out = distill_rows(weight, target, [(r1, torch.arange(9)), (r2, index2)], chunk=4)
        return out.ce[0], out.ce[1]

    assert torch.autograd.gradcheck(loss, (rows1, rows2), eps=1e-6, atol=1e-6)


def test_bf16_autocast_matches_the_plain_formula_loosely():
    weight, target, rows1, rows2, index2 = problem(1024, hidden=64, m=70)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ce1, ce2, labels, _, _ = plain(weight, target, rows1, rows2, index2)
        fused = distill_rows(weight, target, [(rows1, torch.arange(len(target))), (rows2, index2)], chunk=16)
    assert fused.ce[0].dtype == torch.float32
    torch.testing.assert_close(fused.ce[0], ce1, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(fused.ce[1], ce2, rtol=1e-3, atol=1e-3)
    want = torch.autograd.grad(ce1.sum() + ce2.sum(), (rows1, rows2))
    got = torch.autograd.grad(fused.ce[0].sum() + fused.ce[1].sum(), (rows1, rows2))
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == torch.float32
        assert ((a - b).norm() / b.norm()).item() < 2e-2  # bf16 rounding of the [N, V] gradient (measured ~2e-3)
    assert (fused.labels == labels).float().mean() > 0.95  # bf16 ties may pick another argmax


def test_frozen_head_only():
    weight, target, rows1, _, _ = problem(300)
    with pytest.raises(ValueError, match="frozen"):
        distill_rows(weight.requires_grad_(True), target, [(rows1, torch.arange(len(target)))])


def test_block_argmax_and_top_indices():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(50, 4 * BLOCK, generator=g)
    x[0, 7] = x[0, 3 * BLOCK + 1] = x[0].max() + 1  # equal maxima in two blocks: the first one, as argmax
    x[1, :] = 0.0
    assert torch.equal(first_argmax(x), x.argmax(-1)) and first_argmax(x)[0] == 7
    y = torch.randn(50, 4 * BLOCK, generator=g)
    y[2, BLOCK:BLOCK + 3] = 10.0 + torch.arange(3.0)  # the top 3 in one block
    assert torch.equal(top_indices(y, 3), torch.topk(y, 3, dim=-1).indices)
    small = torch.randn(4, 100, generator=g)  # not a multiple of BLOCK: torch's own
    assert torch.equal(top_indices(small, 3), torch.topk(small, 3, dim=-1).indices)


@pytest.mark.parametrize("autocast", [False, True])
def test_draft_losses_fused_equal_plain(autocast):
    """draft_losses with head_weight (the packed path) gives the plain path's terms, gradients and top-k hits."""
    g = torch.Generator().manual_seed(7)
    s, h, v = 40, 32, 1024
    weight = torch.randn(v, h, generator=g) / h ** 0.5
    head1, head2 = (torch.randn(1, s, h, generator=g).requires_grad_(True) for _ in range(2))
    target = torch.randn(1, s, h, generator=g) * 2
    mask = (torch.rand(1, s, generator=g) > 0.25).float()
    positions = torch.tensor([[*range(15), *range(25)]])
    results = []
    for fused in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            terms, scores = draft_losses(head1, head2, target, mask, lambda x: F.linear(x, weight), 1.0, 0.1, 0.5,
                                         position_ids=positions, head_weight=weight if fused else None)
        grads = torch.autograd.grad(terms.total, (head1, head2))
        results.append((terms, grads, [scores.topk_hits(k) for k in (1, 2)], scores))
    (a, grads_a, hits_a, plain_scores), (b, grads_b, hits_b, fused_scores) = results
    assert plain_scores.logits1 is not None and fused_scores.logits1 is None and fused_scores.ranks1 is not None
    tol = dict(rtol=1e-3, atol=1e-4) if autocast else dict(rtol=1e-5, atol=1e-6)
    for name in ("total", "v1", "p1", "v2", "p2"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), **tol)
    for x, y in zip(grads_b, grads_a):
        assert ((x - y).norm() / y.norm()).item() < (2e-2 if autocast else 1e-5)
    if not autocast:
        for x, y in zip(hits_b, hits_a):
            assert torch.equal(x, y)
        assert torch.equal(hits_a[0], topk_correct(plain_scores.logits1, plain_scores.labels1,
                                                   plain_scores.weights1))
