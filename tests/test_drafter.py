"""Tree drafting: shape of the dynamic tree, the CEPD parent fix, and per-expert sibling proposals."""

import pytest
import torch

from jakiro.decoding.drafter import TreeDrafter
from tiny_models import draft_state, tiny_draft, tiny_target

HEAD1_MARK, HEAD2_MARK = 10_000, 20_000  # marker ids beyond the vocabulary (marked nodes are never fed back)


def drafter_for(vocab=256, depth=3, top_k=3, total_token=100, sibling_mode="mixture", parallel_head=True):
    target = tiny_target("llama", vocab_size=vocab)
    draft = tiny_draft(target, parallel_head=parallel_head)
    draft.bind_target_modules(target.get_input_embeddings(), target.get_output_embeddings())
    return target, TreeDrafter(draft.eval(), total_token, depth, top_k, sibling_mode)


def context(target, length=6):
    ids = torch.arange(3, 3 + length)[None]
    with torch.no_grad():
        features = target.get_decoder()(ids).last_hidden_state[0]
    return features, torch.cat([ids[0, 1:], torch.tensor([42])])


@pytest.mark.parametrize("parallel_head", [True, False])
def test_full_tree_has_expected_size_and_depth(parallel_head):
    target, drafter = drafter_for(depth=3, top_k=3, total_token=1000, parallel_head=parallel_head)
    tree = drafter.propose(draft_state(*context(target)))
    # all k + D*k*k candidates fit: 3 + 3*9 = 30 nodes + root
    assert len(tree) == 31
    assert int(tree.depths.max()) == 4  # D + 1 candidate layers
    assert tree.tokens[0] == 42
    assert len(drafter.cache) == 6  # tree entries were cropped: only the context stays


def test_total_token_caps_the_tree():
    target, drafter = drafter_for(total_token=7)
    tree = drafter.propose(draft_state(*context(target)))
    assert len(tree) == 7


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_cepd_candidates_hang_under_a_child_of_their_source(depth, monkeypatch):
    """Head-2 proposals computed at node j must become grandchildren of j (the reference used the wrong parent).

    The forward that evaluates head 2 is the last one, so neither its head-1 children (layer D) nor its head-2
    proposals (layer D+1) are fed back into the draft: both are relabelled with marker ids that encode the source
    row, and every layer-(D+1) node must sit under a layer-D node proposed by the same source row.
    """
    target, drafter = drafter_for(depth=depth, top_k=3, total_token=1000)
    k = drafter.top_k
    original = TreeDrafter._propose

    def spy(self, out, head2=False):
        tokens, logp = original(self, out, head2)
        if out.head2 is not None:  # the forward that also evaluated the parallel head
            rows = tokens.shape[0]
            base = HEAD2_MARK if head2 else HEAD1_MARK
            tokens = base + torch.arange(rows * k).view(rows, k)
        return tokens, logp

    monkeypatch.setattr(TreeDrafter, "_propose", spy)
    tree = drafter.propose(draft_state(*context(target)))
    last_layer = (tree.depths == depth + 1).nonzero().squeeze(1)
    assert len(last_layer) == k * k
    for node in last_layer.tolist():
        token, parent_token = int(tree.tokens[node]), int(tree.tokens[tree.parents[node]])
        assert HEAD2_MARK <= token and HEAD1_MARK <= parent_token < HEAD2_MARK
        assert (token - HEAD2_MARK) // k == (parent_token - HEAD1_MARK) // k, "attached under another source"


def test_per_expert_siblings_take_each_experts_top_choice():
    target, drafter = drafter_for(sibling_mode="per_expert", top_k=4)
    features, tokens = context(target)
    draft = drafter.draft
    positions = torch.arange(len(tokens))[None]
    with torch.no_grad():
        out = draft(features[None], tokens[None], positions, last_position_only=True, with_experts=True)
        proposed, logp = drafter._propose(out)
        per_expert_top1 = draft.logits(out.expert_features[0, 0]).argmax(-1)  # [E_k]
    assert len(set(proposed[0].tolist())) == 4  # no duplicates
    assert set(per_expert_top1.tolist()) <= set(proposed[0].tolist())
    assert proposed[0, 0] == per_expert_top1[0]  # the strongest expert's favourite comes first
