"""Pure pieces of draft training on hand-made tensors: losses, head-2 alignment, collate, noise, sampler, metrics."""

import math

import pytest
import torch

from jakiro.train.data import ShardedBatchSampler, add_noise, collate, mix_seed, split_indices
from jakiro.train.losses import (
    EPS,
    draft_losses,
    gather_rows,
    load_balancing_loss,
    smooth_l1,
    soft_cross_entropy,
    weighted_sum,
)
from jakiro.train.metrics import ROW_CHUNK, draft_chain, greedy_tokens, topk_correct
from jakiro.train.unroll import chain_step_attention


def identity_head(x):
    """An 'LM head' whose logits are the features themselves (V = H)."""
    return x


# --- loss functions -------------------------------------------------------------------------------------------------
def test_smooth_l1_by_hand():
    # |d| = 0.5 -> 0.5 * 0.5^2 = 0.125 ; |d| = 3 -> 3 - 0.5 = 2.5 ; mean over H = 1.3125
    assert smooth_l1(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.5, -3.0]])).item() == pytest.approx(1.3125)


def test_soft_cross_entropy_by_hand():
    # log_softmax([0, ln 3]) = [ln 1/4, ln 3/4]; p = [1/2, 1/2]
    value = soft_cross_entropy(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.5, 0.5]]))
    assert value.item() == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)), rel=1e-6)
    # a one-hot target reduces to the ordinary cross-entropy
    assert soft_cross_entropy(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 1.0]])).item() == \
        pytest.approx(-math.log(0.75), rel=1e-6)


def test_weighted_sum():
    assert weighted_sum(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 0.0, 0.5]), 2.0).item() == 1.5


@pytest.mark.parametrize(
    "logits, weights, expected",
    [
        ([[math.log(3), 0.0], [0.0, math.log(3)]], [1.0, 1.0], 1.0),  # f = (.5, .5), P = (.5, .5) -> 2 * .5
        ([[math.log(3), 0.0], [math.log(3), 0.0]], [1.0, 1.0], 1.5),  # f = (1, 0), P = (.75, .25) -> 2 * .75
        ([[math.log(3), 0.0], [0.0, math.log(3)]], [1.0, 0.0], 1.5),  # the second position carries no weight
    ],
)
def test_load_balancing_loss_by_hand(logits, weights, expected):
    value = load_balancing_loss(torch.tensor(logits), torch.tensor(weights), experts_per_token=1)
    assert value.item() == pytest.approx(expected, rel=1e-4)


def test_load_balancing_top2_of_4():
    logits = torch.tensor([[3.0, 2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 2.0]])
    probs = logits.softmax(-1)
    share = torch.tensor([0.25, 0.25, 0.25, 0.25])  # each expert gets one of the 4 assignments
    expected = 4 * (share * probs.mean(0)).sum()
    assert load_balancing_loss(logits, torch.ones(2), 2).item() == pytest.approx(expected.item(), rel=1e-4)


def _reference_losses(pred1, pred2, target, mask, c=0.5, v_w=1.0, p_w=0.1):
    """The reference formulas with explicit loops over positions (independent of the vectorised gather)."""
    def term(pred, tgt, m):
        v = p = 0.0
        for i in range(len(m)):
            d = (pred[i] - tgt[i]).abs()
            v += m[i] * torch.where(d < 1, 0.5 * d * d, d - 0.5).mean().item()
            probs = tgt[i].softmax(-1)
            p += m[i] * -(probs * pred[i].log_softmax(-1)).sum().item()
        return v / (sum(m) + EPS), p / (sum(m) + EPS)

    m = mask.flatten().tolist()
    v1, p1 = term(pred1.reshape(-1, pred1.shape[-1]), target.reshape(-1, target.shape[-1]), m)
    rows2, tgt2, m2 = [], [], []
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1] - 1):
            rows2.append(pred2[b, t])
            tgt2.append(target[b, t + 1])
            m2.append(mask[b, t + 1].item())
    v2, p2 = term(torch.stack(rows2), torch.stack(tgt2), m2)
    return v1, p1, v2, p2, v_w * (v1 + c * v2) + p_w * (p1 + c * p2)


def test_draft_losses_match_the_reference_formulas():
    g = torch.Generator().manual_seed(0)
    pred1, pred2, target = (torch.randn(2, 5, 3, generator=g) * 2 for _ in range(3))
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 1, 0]], dtype=torch.float32)
    terms, scores = draft_losses(pred1, pred2, target, mask, identity_head, 1.0, 0.1, 0.5)
    v1, p1, v2, p2, total = _reference_losses(pred1, pred2, target, mask)
    for got, want in ((terms.v1, v1), (terms.p1, p1), (terms.v2, v2), (terms.p2, p2), (terms.total, total)):
        assert got.item() == pytest.approx(want, rel=1e-5)
    # labels are the target's argmax at the weighted positions; head 2's are those one position later
    assert scores.labels1.tolist() == target[mask > 0].argmax(-1).tolist()
    positions2 = [(0, 1), (0, 2), (0, 3), (1, 1), (1, 3)]  # weighted target positions s >= 1 (pred2 at s - 1)
    assert scores.labels2.tolist() == [target[b, s].argmax().item() for b, s in positions2]


def test_head2_is_aligned_by_position():
    g = torch.Generator().manual_seed(1)
    target = torch.randn(2, 6, 4, generator=g)
    mask = torch.ones(2, 6)
    mask[:, -1] = 0
    shifted = torch.cat([target[:, 1:], torch.zeros(2, 1, 4)], dim=1)  # pred2[t] = target[t + 1]
    terms, _ = draft_losses(target, shifted, target, mask, identity_head, 1.0, 0.1, 0.5)
    assert terms.v1.item() == 0 and terms.v2.item() == 0
    terms, _ = draft_losses(target, target, target, mask, identity_head, 1.0, 0.1, 0.5)  # pred2[t] = target[t]
    assert terms.v2.item() > 0.1
    # only mask[t + 1] matters for head 2: a wrong pred2 at the last position (t = S-1) is never scored, and
    # neither is pred2[t] whose target t + 1 has no weight
    bad = shifted.clone()
    bad[:, -1] = 100.0
    bad[0, 2] = 100.0
    mask[0, 3] = 0
    assert draft_losses(target, bad, target, mask, identity_head, 1.0, 0.1, 0.5)[0].v2.item() == 0


def test_gather_rows_without_head2():
    target = torch.arange(12.0).reshape(1, 4, 3)
    mask = torch.tensor([[0.0, 1.0, 0.5, 0.0]])
    rows, first, second = gather_rows(target, None, target, mask)
    assert second is None and rows.tolist() == [[3, 4, 5], [6, 7, 8]] and first.weights.tolist() == [1.0, 0.5]


def test_global_normalizers_split_a_batch_exactly():
    """Two halves with normaliser (global sum + eps) / 2 each, summed, equal the whole batch's masked mean."""
    g = torch.Generator().manual_seed(2)
    pred1, pred2, target = (torch.randn(4, 5, 3, generator=g) for _ in range(3))
    pred1.requires_grad_(True)
    mask = (torch.rand(4, 5, generator=g) > 0.3).float()
    whole, _ = draft_losses(pred1, pred2, target, mask, identity_head, 1.0, 0.1, 0.5)
    norms = ((mask.sum() + EPS) / 2, (mask[:, 1:].sum() + EPS) / 2)
    halves = [draft_losses(pred1[i:i + 2], pred2[i:i + 2], target[i:i + 2], mask[i:i + 2], identity_head,
                           1.0, 0.1, 0.5, norms)[0] for i in (0, 2)]
    assert (halves[0].total + halves[1].total).item() / 2 == pytest.approx(whole.total.item(), rel=1e-6)
    grad_whole = torch.autograd.grad(whole.total, pred1)[0]
    grad_split = torch.autograd.grad((halves[0].total + halves[1].total) / 2, pred1)[0]
    torch.testing.assert_close(grad_split, grad_whole)


def test_eagle2_draft_has_only_head1_terms():
    g = torch.Generator().manual_seed(3)
    pred1, target = torch.randn(1, 4, 3, generator=g), torch.randn(1, 4, 3, generator=g)
    terms, scores = draft_losses(pred1, None, target, torch.ones(1, 4), identity_head, 1.0, 0.1, 0.5)
    assert terms.v2.item() == 0 and terms.p2.item() == 0 and scores.logits2 is None
    assert terms.total.item() == pytest.approx(terms.v1.item() + 0.1 * terms.p1.item())


# --- data -----------------------------------------------------------------------------------------------------------
def item(ids, mask, hidden=2):
    ids = torch.tensor(ids)
    return {"input_ids": ids, "loss_mask": torch.tensor(mask),
            "hidden_state": (ids[:, None] * 10 + torch.arange(hidden)).float()}


def test_collate_shifts_pads_and_masks():
    batch = collate([item([1, 2, 3, 4], [0, 1, 1, 1]), {**item([5, 6], [1, 1]), "weight": 0.0, "index": 7}], 16)
    assert batch["input_ids"].tolist() == [[2, 3, 4, 0], [6, 0, 0, 0]]
    assert batch["features"][:, :, 0].tolist() == [[10, 20, 30, 40], [50, 60, 0, 0]]
    assert batch["target"][:, :, 0].tolist() == [[20, 30, 40, 0], [60, 0, 0, 0]]
    # the stored mask with its last entry zeroed; a weight-0 sequence carries no loss
    assert batch["loss_mask"].tolist() == [[0, 1, 1, 0], [0, 0, 0, 0]]
    assert batch["lengths"].tolist() == [4, 2] and batch["index"].tolist() == [0, 7]


def test_collate_truncates_to_max_len():
    batch = collate([item([1, 2, 3, 4, 5], [1, 1, 1, 1, 1])], 3)
    assert batch["input_ids"].tolist() == [[2, 3, 0]]
    assert batch["target"][0, :, 0].tolist() == [20, 30, 0]
    assert batch["loss_mask"].tolist() == [[1, 1, 0]]


def test_uniform_noise():
    features = torch.zeros(2, 8, 16)
    lengths = torch.tensor([8, 4])
    noisy = add_noise(features, lengths, [1, 2], "uniform", 0.0, 0.2)
    assert noisy[1, 4:].abs().max() == 0  # padding untouched
    for row, length in enumerate((8, 4)):
        amplitude = 0.2 * 512 / length / 2
        part = noisy[row, :length]
        assert part.abs().max() <= amplitude and part.abs().max() > 0.8 * amplitude
    again = add_noise(features, lengths, [1, 2], "uniform", 0.0, 0.2)
    assert torch.equal(noisy, again)  # seeded per sequence
    assert not torch.equal(add_noise(features, lengths, [1, 3], "uniform", 0.0, 0.2)[1], noisy[1])
    assert torch.equal(add_noise(features[:1], lengths[:1], [1], "uniform", 0.0, 0.2), noisy[:1])  # batch-independent


def test_gaussian_and_no_noise():
    features = torch.ones(1, 500, 40)
    noisy = add_noise(features, torch.tensor([500]), [0], "gaussian", 0.1, 0.2) - 1
    assert noisy.mean().item() == pytest.approx(0.1, abs=0.01) and noisy.std().item() == pytest.approx(0.2, abs=0.01)
    assert torch.equal(add_noise(features, torch.tensor([500]), [0], "none", 0.0, 0.2), features)


def test_sampler_gives_the_same_global_batches_for_any_process_count():
    n, seed = 11, 5
    one = ShardedBatchSampler(n, 4, 1, 0, seed, shuffle=True)
    two = [ShardedBatchSampler(n, 2, 2, r, seed, shuffle=True) for r in range(2)]
    for s in (one, *two):
        s.set_epoch(3)
    batches1, batches2 = list(one), [list(s) for s in two]
    assert len(batches1) == len(batches2[0]) == len(batches2[1]) == 3
    for k, batch in enumerate(batches1):
        assert batch == batches2[0][k] + batches2[1][k]
    seen = [i for batch in batches1 for i, w in batch if w == 1.0]
    assert sorted(seen) == list(range(n))  # every sequence once, the last batch padded with weight 0
    assert [w for _, w in batches1[-1]] == [1.0, 1.0, 1.0, 0.0]
    one.set_epoch(4)
    assert list(one) != batches1  # reshuffled per epoch
    one.set_epoch(3, start=2)
    assert list(one) == batches1[2:] and len(one) == 1  # resume inside an epoch


def test_sampler_pads_to_a_multiple_of_accumulation():
    sampler = ShardedBatchSampler(9, 2, 1, 0, 0, shuffle=False, multiple_of=4)
    batches = list(sampler)
    assert len(batches) == 8 and [i for i, _ in batches[0]] == [0, 1]
    assert sum(w for batch in batches for _, w in batch) == 9


def test_split_is_seeded_disjoint_and_shuffled():
    train, test = split_indices(100, 0.1, 0)
    assert len(test) == 10 and not set(train) & set(test) and sorted(train + test) == list(range(100))
    assert (train, test) == split_indices(100, 0.1, 0) and test != split_indices(100, 0.1, 1)[1]
    assert test != list(range(90, 100))  # not the file order
    assert split_indices(1, 0.5, 0) == ([0], []) and mix_seed(1, 2) != mix_seed(2, 1)


# --- metrics --------------------------------------------------------------------------------------------------------
def test_topk_correct_by_hand():
    logits = torch.tensor([[0.1, 0.5, 0.3, 0.0], [0.9, 0.1, 0.0, 0.2], [0.0, 0.1, 0.2, 0.3]])
    labels = torch.tensor([2, 0, 0])  # rank 2, rank 1, rank 4
    assert topk_correct(logits, labels, torch.tensor([1.0, 1.0, 1.0])).tolist() == [1.0, 2.0, 2.0]
    assert topk_correct(logits, labels, torch.tensor([1.0, 0.0, 1.0])).tolist() == [0.0, 1.0, 1.0]


def test_greedy_tokens_everywhere_and_where_asked():
    """Chunked argmax of the head over [..., H] features: everywhere without ``where``, -1 outside it with."""
    head = torch.nn.Linear(6, 11, bias=False)
    features = torch.randn(3, ROW_CHUNK // 2 + 5, 6)
    expected = head(features).argmax(-1)
    assert torch.equal(greedy_tokens(head, features), expected)
    where = torch.rand(features.shape[:-1]) < 0.5
    assert torch.equal(greedy_tokens(head, features, where), torch.where(where, expected, -1))
    assert greedy_tokens(head, features[:, :0]).shape == (3, 0)
    assert (greedy_tokens(head, features, torch.zeros_like(where)) == -1).all()


def test_chain_step_attention_equals_each_node_alone():
    """Node t at step k: softmax over the context keys <= t and its own k nodes, one query at a time (GQA: 4 query
    heads on 2 key/value heads)."""
    g = torch.Generator().manual_seed(0)
    b, heads, kv, length, steps, d = 2, 4, 2, 5, 3, 8
    q = torch.randn(b, heads, length, d, generator=g)
    keys, values = torch.randn(b, kv, length, d, generator=g), torch.randn(b, kv, length, d, generator=g)
    own_k, own_v = torch.randn(b, kv, length, steps, d, generator=g), torch.randn(b, kv, length, steps, d, generator=g)
    got = chain_step_attention(q, keys, values, own_k, own_v, 0.3)
    for row in range(b):
        for head in range(heads):
            group = head // (heads // kv)
            for t in range(length):
                k = torch.cat([keys[row, group, : t + 1], own_k[row, group, t]])
                v = torch.cat([values[row, group, : t + 1], own_v[row, group, t]])
                want = ((k @ q[row, head, t]) * 0.3).softmax(-1) @ v
                torch.testing.assert_close(got[row, head, t], want, rtol=1e-5, atol=1e-6)


def test_draft_chain_equals_running_each_start_alone():
    """The batched, cached chain gives the tokens of running the draft from each start position separately."""
    from tiny_models import tiny_draft, tiny_target

    target = tiny_target("llama", 64, 0)
    draft = tiny_draft(target).eval()
    draft.bind_target_modules(target.get_input_embeddings(), target.get_output_embeddings())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (1, 7), generator=g)
    with torch.no_grad():
        features = target.get_decoder()(ids).last_hidden_state
    tokens = ids[:, 1:].contiguous()
    features = features[:, :-1].contiguous()
    steps = 3
    chain = draft_chain(draft, features, tokens, steps)
    for t in range(tokens.shape[1]):
        feats, toks = features[:, : t + 1], tokens[:, : t + 1]
        with torch.no_grad():
            for k in range(steps):
                out = draft(feats, toks, torch.arange(feats.shape[1])[None]).head1[:, -1:]
                token = draft.logits(out).argmax(-1)
                assert token.item() == chain[k, 0, t].item(), (t, k)
                feats, toks = torch.cat([feats, out], 1), torch.cat([toks, token], 1)


class _OracleDraft(torch.nn.Module):
    """A stand-in draft whose head-1 feature at position p is the true f_{p+1}, except where ``wrong[k]`` (its k-th
    call, i.e. draft step k, by start position) is set: there it is noise. Counts the rows its LM head scores."""

    def __init__(self, true: torch.Tensor, wrong: torch.Tensor, vocab: int):
        super().__init__()
        self.true, self.wrong, self.calls, self.head_rows = true, wrong, 0, 0
        self.lm_head = torch.nn.Linear(true.shape[-1], vocab, bias=False)

    def logits(self, h):
        self.head_rows += h.reshape(-1, h.shape[-1]).shape[0]
        return self.lm_head(h)

    def forward(self, features, input_ids, position_ids, with_head2=False, attend=None):
        from jakiro.model.draft import DraftOutput

        rows = torch.arange(features.shape[0])[:, None]
        head1 = self.true[rows, (position_ids + 1).clamp_max(self.true.shape[1] - 1)]
        noise = torch.randn(head1.shape, generator=torch.Generator().manual_seed(self.calls))
        head1 = torch.where(self.wrong[self.calls][..., None], noise, head1)
        self.calls += 1
        return DraftOutput(head1=head1)


def _chain_accuracy_by_definition(draft, features, input_ids, target, mask, steps):
    """draft_chain_accuracy's counts the plain way: every head over every position."""
    from jakiro.train.unroll import ahead

    target_tokens = draft.lm_head(target).argmax(-1)
    on_greedy = (mask > 0) & (input_ids == draft.lm_head(features).argmax(-1))
    chain = draft_chain(draft, features, input_ids, steps)
    scored, alive = torch.ones_like(on_greedy), torch.ones_like(on_greedy)
    correct, total = torch.zeros(steps), torch.zeros(steps)
    for k in range(steps):
        scored &= ahead(on_greedy, k, False)
        alive &= chain[k] == ahead(target_tokens, k, -1)
        total[k], correct[k] = scored.sum(), (alive & scored).sum()
    return correct, total


def test_draft_chain_accuracy_counts_by_definition_with_fewer_head_rows():
    """Padded rows, unweighted prompt spans, a row cut with its last target known, text off the target's greedy path
    and a draft wrong at random steps:
    the counts equal the plain definition's, while the draft's LM head scores only the chains still followed."""
    from jakiro.train.metrics import draft_chain_accuracy

    g = torch.Generator().manual_seed(3)
    b, s, h, vocab, steps = 3, 24, 16, 32, 4
    lengths = [24, 17, 9]
    true = torch.randn(b, s + 1, h, generator=g)
    for row, n in enumerate(lengths[1:], 1):
        true[row, n:] = 0  # padding: features past the row's length are zero
    features, target = true[:, :s].clone(), true[:, 1:].clone()
    mask = torch.zeros(b, s)
    mask[0, s // 3:] = 1.0  # row 0 is cut at S: its last target (f_S) is known and weighted
    for row, n in enumerate(lengths[1:], 1):
        target[row, n - 1] = 0  # the loader's layout: the last position has target 0 and weight 0
        mask[row, n // 3: n - 1] = 1.0  # the first third is the (unweighted) prompt
    wrong = torch.rand(steps, b, s, generator=g) < 0.25
    wrong[0, 0, -1] = False  # the chain from row 0's last position is right (scored against f_S's token)
    torch.manual_seed(0)
    plain, fast = _OracleDraft(true, wrong, vocab), _OracleDraft(true, wrong, vocab)
    fast.lm_head.load_state_dict(plain.lm_head.state_dict())
    with torch.no_grad():
        greedy = plain.lm_head(features).argmax(-1)
    off = torch.rand(b, s, generator=g) < 0.15
    off[0, -1] = False
    input_ids = torch.where(off, (greedy + 1) % vocab, greedy)  # the target's greedy tokens, except some
    want = _chain_accuracy_by_definition(plain, features, input_ids, target, mask, steps)
    got = draft_chain_accuracy(fast, features, input_ids, target, mask, steps)
    torch.testing.assert_close(got, want)
    assert want[1][0] > 20 and want[0][steps - 1] > 0, want  # scored chains, some correct to the last step
    assert (want[0] < want[1]).all(), want  # and some wrong ones
    assert fast.head_rows < plain.head_rows / 2, (fast.head_rows, plain.head_rows)
