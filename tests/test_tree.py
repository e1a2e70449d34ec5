"""Tree bookkeeping: worked examples for masks, depths, paths, candidate selection, and KV compaction."""

import pytest
import torch

from jakiro.target import TargetModel
from jakiro.decoding.tree import (
    DraftTree,
    additive_tree_mask,
    ancestor_mask,
    build_tree,
    graft_chain,
    retrieve_indices,
    select_candidates,
)
from tiny_models import tiny_target

# the worked example of jakiro/decoding/tree.py
PARENTS = torch.tensor([-1, 0, 0, 1, 1, 2])
MASK = torch.tensor(
    [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0],
        [1, 1, 0, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],
        [1, 0, 1, 0, 0, 1],
    ],
    dtype=torch.bool,
)


def test_ancestor_mask_worked_example():
    assert torch.equal(ancestor_mask(PARENTS), MASK)


def test_depths_and_retrieve_indices_worked_example():
    depths = MASK.sum(1) - 1
    assert depths.tolist() == [0, 1, 1, 2, 2, 2]
    assert retrieve_indices(MASK, depths).tolist() == [[0, 1, 3], [0, 1, 4], [0, 2, 5]]


def test_retrieve_indices_pads_short_paths():
    # 0 -> 1 -> 2 -> 3 and a lone leaf 4 under the root
    parents = torch.tensor([-1, 0, 1, 2, 0])
    mask = ancestor_mask(parents)
    assert retrieve_indices(mask, mask.sum(1) - 1).tolist() == [[0, 1, 2, 3], [0, 4, -1, -1]]


def test_single_node_tree():
    tree = build_tree(7, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                      torch.zeros(0, dtype=torch.long))
    assert tree.tokens.tolist() == [7]
    assert tree.retrieve_indices.tolist() == [[0]]


def test_select_candidates_is_ancestor_closed_under_ties():
    # candidate 2 is a child of 0 with log-prob 0 (same score as its parent): the parent must come first
    scores = torch.tensor([-1.0, -0.5, -1.0, -3.0])
    assert select_candidates(scores, 2).tolist() == [0, 1]
    assert select_candidates(scores, 3).tolist() == [0, 1, 2]
    assert select_candidates(scores, 10).tolist() == [0, 1, 2, 3]


def test_build_tree_maps_candidate_parents_to_nodes():
    #   candidates: 0:a(root child) 1:b(root child) 2:c(child of 0) 3:d(child of 1) 4:e(child of 2)
    tokens = torch.tensor([10, 11, 12, 13, 14])
    parents = torch.tensor([-1, -1, 0, 1, 2])
    tree = build_tree(5, tokens, parents, torch.tensor([0, 1, 2, 4]))
    assert tree.tokens.tolist() == [5, 10, 11, 12, 14]
    assert tree.parents.tolist() == [-1, 0, 0, 1, 3]
    assert tree.depths.tolist() == [0, 1, 1, 2, 3]
    assert tree.retrieve_indices.tolist() == [[0, 2, -1, -1], [0, 1, 3, 4]]  # leaves in node order


def worked_example_tree(tokens=(50, 10, 20, 11, 12, 21)) -> DraftTree:
    return DraftTree.from_parents(torch.tensor(tokens), PARENTS)


def test_graft_chain_follows_matching_nodes_and_appends_the_rest():
    tree = graft_chain(worked_example_tree(), torch.tensor([10, 12, 7, 8]))  # 10 -> 12 exist (nodes 1, 4)
    assert tree.tokens.tolist() == [50, 10, 20, 11, 12, 21, 7, 8]
    assert tree.parents.tolist() == [-1, 0, 0, 1, 1, 2, 4, 6]
    assert tree.depths.tolist() == [0, 1, 1, 2, 2, 2, 3, 4]
    assert torch.equal(tree.mask, ancestor_mask(tree.parents))
    assert tree.retrieve_indices.tolist() == [[0, 1, 3, -1, -1], [0, 2, 5, -1, -1], [0, 1, 4, 6, 7]]


def test_graft_chain_keeps_siblings_distinct():
    tree = graft_chain(worked_example_tree(), torch.tensor([30, 10, 30]))  # a new branch under the root
    assert tree.parents.tolist()[6:] == [0, 6, 7]
    for node in range(len(tree)):
        children = tree.tokens[tree.parents == node].tolist()
        assert len(children) == len(set(children))


def test_graft_chain_already_in_the_tree_or_empty_changes_nothing():
    tree = worked_example_tree()
    assert graft_chain(tree, torch.tensor([20, 21])) is tree
    assert graft_chain(tree, torch.tensor([], dtype=torch.long)) is tree


def test_additive_mask_values():
    mask = additive_tree_mask(MASK[:3, :3], prefix_len=2, dtype=torch.float32)
    low = torch.finfo(torch.float32).min
    assert mask.shape == (1, 1, 3, 5)
    assert mask[0, 0].tolist() == [
        [0, 0, 0, low, low],
        [0, 0, 0, 0, low],
        [0, 0, 0, low, 0],
    ]


def test_kv_compaction_matches_sequential_decoding():
    """Verify a tree, keep one path, and check the next step equals running that path causally."""
    model = tiny_target("llama", vocab_size=64)
    target = TargetModel(model)
    prompt = torch.tensor([[3, 9, 27, 17]])
    target.prefill(prompt)
    tree = build_tree(5, torch.tensor([10, 11, 12, 13, 14]), torch.tensor([-1, -1, 0, 1, 2]),
                      torch.tensor([0, 1, 2, 3, 4]))
    # nodes: 0:5  1:10  2:11  3:12(child of 1)  4:13(child of 2)  5:14(child of 3)
    tree_logits, _ = target.verify(tree)
    target.commit(prefix_len=4, keep_nodes=torch.tensor([0, 2, 4]))  # path 5 -> 11 -> 13
    assert len(target) == 7
    next_logits, _ = target.step(21)

    with torch.no_grad():
        full = model(torch.tensor([[3, 9, 27, 17, 5, 11, 13, 21]])).logits[0].float()
    assert torch.allclose(next_logits, full[-1], atol=1e-4)
    # tree logits along the kept path equal the causal logits of the same tokens
    assert torch.allclose(tree_logits[[0, 2, 4]], full[4:7], atol=1e-4)


@pytest.mark.parametrize("keep", [[0, 2, 4], [0], []])
def test_kv_compaction_keeps_the_prefix_and_moves_the_kept_nodes_behind_it(keep):
    target = TargetModel(tiny_target("llama", vocab_size=64))
    target.prefill(torch.tensor([[3, 9, 27, 17]]))
    target.verify(build_tree(5, torch.tensor([10, 11, 12, 13, 14]), torch.tensor([-1, -1, 0, 1, 2]),
                             torch.tensor([0, 1, 2, 3, 4])))
    before = [(layer.keys.clone(), layer.values.clone()) for layer in target.cache.layers]
    target.commit(prefix_len=4, keep_nodes=torch.tensor(keep, dtype=torch.long))
    index = torch.tensor([0, 1, 2, 3, *(4 + node for node in keep)])
    assert len(target) == 4 + len(keep)
    for layer, (keys, values) in zip(target.cache.layers, before):
        assert torch.equal(layer.keys, keys.index_select(-2, index))
        assert torch.equal(layer.values, values.index_select(-2, index))
