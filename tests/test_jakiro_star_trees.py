"""Jakiro* static trees: the registry's shapes, the worked example, conversion to DraftTree, and bad choices."""

import pytest
import torch

from jakiro.decoding.tree import ancestor_mask
from jakiro_star.tree_choices import STATIC_TREES
from jakiro_star.trees import StaticTree, get_static_tree

EXAMPLE = [[0], [1], [0, 0], [0, 1], [0, 0, 0]]  # the module docstring's worked example


def nodes_per_depth(tree: StaticTree) -> list[int]:
    return torch.bincount(tree.depths)[1:].tolist()


@pytest.mark.parametrize(
    "name, per_depth",
    [
        ("mc_sim_7b_63", [4, 8, 8, 3, 2, 1]),  # the reference's depth-6 variant: 26 nodes
        ("cpu8", [3, 3, 1, 1]),
        ("cpu12", [3, 5, 2, 1, 1]),
        ("cpu16", [4, 6, 4, 1, 1]),
    ],
)
def test_registered_trees_have_their_documented_shape(name, per_depth):
    tree = get_static_tree(name)
    assert tree.name == name
    assert nodes_per_depth(tree) == per_depth
    assert len(tree) == sum(per_depth) + 1  # + root
    assert tree.depth == len(per_depth)
    assert set(STATIC_TREES) == {"mc_sim_7b_63", "cpu8", "cpu12", "cpu16"}


def test_worked_example():
    tree = get_static_tree(EXAMPLE)
    assert tree.name == "custom"
    assert tree.choices == ((0,), (1,), (0, 0), (0, 1), (0, 0, 0))
    assert tree.parents.tolist() == [-1, 0, 0, 1, 1, 3]
    assert tree.ranks.tolist() == [-1, 0, 1, 0, 1, 0]
    assert tree.depths.tolist() == [0, 1, 1, 2, 2, 3]
    assert tree.num_children.tolist() == [2, 2, 0, 1, 0, 0]
    assert tree.max_children == 2
    assert tree.nodes_at(2).tolist() == [3, 4]
    assert torch.equal(tree.mask, ancestor_mask(tree.parents))


def test_choices_are_sorted_breadth_first_whatever_the_input_order():
    shuffled = [[0, 0, 0], [0, 1], [1], [0, 0], [0]]
    assert get_static_tree(shuffled).choices == get_static_tree(EXAMPLE).choices


@pytest.mark.parametrize("name", sorted(STATIC_TREES))
def test_registered_trees_are_consistent(name):
    tree = get_static_tree(name)
    for node, choice in enumerate(tree.choices, start=1):
        parent = int(tree.parents[node])
        assert parent < node
        assert tree.choices[parent - 1] == choice[:-1] if parent else len(choice) == 1
        assert int(tree.ranks[node]) == choice[-1]
    # siblings appear in rank order 0, 1, 2, ... (the drawing and trial order)
    for node in range(len(tree)):
        kids = (tree.parents == node).nonzero().squeeze(1)
        assert tree.ranks[kids].tolist() == list(range(len(kids)))


def test_to_draft_tree_keeps_node_order_and_drops_absent_subtrees():
    tree = get_static_tree(EXAMPLE)
    tokens = torch.tensor([11, 12, 13, 14, 15])  # nodes 1..5
    full = tree.to_draft_tree(10, tokens)
    assert full.tokens.tolist() == [10, 11, 12, 13, 14, 15]
    assert torch.equal(full.parents, tree.parents) and torch.equal(full.depths, tree.depths)
    assert full.retrieve_indices.tolist() == [[0, 2, -1, -1], [0, 1, 4, -1], [0, 1, 3, 5]]  # leaves 2, 4, 5
    # node 3 absent -> its child node 5 must be absent too
    partial = tree.to_draft_tree(10, tokens, torch.tensor([True, True, False, True, False]))
    assert partial.tokens.tolist() == [10, 11, 12, 14]
    assert partial.parents.tolist() == [-1, 0, 0, 1]


def test_to_draft_tree_rejects_wrong_token_count():
    with pytest.raises(ValueError, match="expected 5 node tokens"):
        get_static_tree(EXAMPLE).to_draft_tree(0, torch.tensor([1, 2, 3]))


@pytest.mark.parametrize(
    "choices, needle",
    [
        ([], "non-empty list"),
        ("cpu8x", "unknown static tree 'cpu8x'"),
        ([[0], []], "non-empty list of ranks"),
        ([[0], [-1]], "ranks >= 0"),
        ([[0], [0.5]], "ranks >= 0"),
        ([[0], [0]], "duplicate choices"),
        ([[0], [0, 0, 0]], "has no parent [0, 0]"),
        ([[0], [2]], "needs its elder sibling [1]"),
        ([[0], [0, 1]], "needs its elder sibling [0, 0]"),
    ],
)
def test_bad_choices_are_clear_errors(choices, needle):
    with pytest.raises(ValueError) as err:
        get_static_tree(choices)
    assert needle in str(err.value)
    if isinstance(choices, str):
        assert "mc_sim_7b_63" in str(err.value)  # lists the registered names
