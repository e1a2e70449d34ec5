"""The one drafter interface: every drafter implements it, a user's drafter plugs into EaModel (and is checked),
prompt lookup composes with any drafter, and Jakiro* builds only its static drafter."""

import pytest
import torch

from imitating_draft import imitating_draft, weak_context_target
from jakiro.decoding.drafter import TreeDrafter
from jakiro.decoding.drafting import Drafter, DraftState
from jakiro.decoding.lookup import PromptLookup
from jakiro.decoding.oracle import OracleDrafter
from jakiro.decoding.tree import DraftTree
from jakiro.model import ea_model
from jakiro.model.ea_model import EaModel
from jakiro_star.drafter import StaticTreeDrafter
from jakiro_star.model import StarEaModel
from tiny_models import tiny_draft, tiny_ea_model, tiny_target

PROMPT = torch.tensor([[3, 1, 4, 1, 5, 3, 1, 4]])

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


class RootOnly:
    """Proposes no draft token at all (a one-node tree); counts its resets."""

    total_token = 1

    def __init__(self):
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def propose(self, state: DraftState) -> DraftTree:
        return DraftTree.from_parents(state.tokens[-1:].cpu(), torch.tensor([-1]))


class Misbehaving(RootOnly):
    """Proposes a tree rooted at the wrong token, or one node more than its total_token."""

    def __init__(self, fault: str):
        super().__init__()
        self.fault = fault

    def propose(self, state: DraftState) -> DraftTree:
        root = int(state.tokens[-1])
        if self.fault == "root":
            return DraftTree.from_parents(torch.tensor([root + 1]), torch.tensor([-1]))
        return DraftTree.from_parents(torch.tensor([root, 0]), torch.tensor([-1, 0]))


def test_every_drafter_implements_the_protocol():
    model = tiny_ea_model()
    drafters = [model.drafter, OracleDrafter(model.target, 4), RootOnly(), PromptLookup(RootOnly(), 3),
                StaticTreeDrafter(tiny_draft(model.base_model, parallel_head=False), "cpu8")]
    assert isinstance(drafters[0], TreeDrafter)
    for drafter in drafters:
        assert isinstance(drafter, Drafter) and isinstance(drafter.total_token, int)


def test_prompt_lookup_alone_is_lossless_and_accepted():
    """A drafter proposing nothing, wrapped in prompt lookup: pure prompt-lookup decoding."""
    target = tiny_target("llama", vocab_size=16)
    inner = RootOnly()
    model = EaModel(target, None, None, drafter=PromptLookup(inner, 5), stop_token_ids=[])
    ids = model.eagenerate(PROMPT, max_new_tokens=48)
    assert torch.equal(ids, model.naivegenerate(PROMPT, max_new_tokens=48))
    model.eagenerate(PROMPT, max_new_tokens=48)
    assert inner.resets == 2, "PromptLookup.reset must reach the inner drafter"
    assert sum(model.last_stats.accept_lengths) > 10, "the looked-up branch (the only draft) was barely accepted"
    assert model.active_drafter().total_token == 6


def test_lookup_tokens_wraps_any_drafter_at_each_call():
    target = tiny_target("llama", vocab_size=16)
    model = EaModel(target, None, None, drafter=RootOnly(), stop_token_ids=[], lookup_tokens=4)
    assert isinstance(model.active_drafter(), PromptLookup) and model.active_drafter().total_token == 5
    model.lookup_tokens = 0
    assert isinstance(model.active_drafter(), RootOnly)


def test_a_drafter_that_is_not_one_is_refused_with_a_clear_error():
    target = tiny_target("llama", vocab_size=16)
    with pytest.raises(ValueError, match="does not implement the Drafter interface.*propose"):
        EaModel(target, None, None, drafter=object())
    model = EaModel(target, None, None, drafter=RootOnly(), stop_token_ids=[])
    model.drafter = "bigram"
    with pytest.raises(ValueError, match="the drafter str does not implement the Drafter interface"):
        model.eagenerate(PROMPT, max_new_tokens=4)
    with pytest.raises(ValueError, match="needs a draft head"):
        EaModel(target, None, None, total_token=8, depth=2, top_k=2)


@pytest.mark.parametrize("fault, match", [("root", "rooted at token .*the root must be the last committed token"),
                                          ("size", "returned 2 nodes, more than its total_token = 1")])
def test_a_bad_tree_is_refused_before_the_target_sees_it(fault, match):
    target = tiny_target("llama", vocab_size=16)
    model = EaModel(target, None, None, drafter=Misbehaving(fault), stop_token_ids=[])
    with pytest.raises(ValueError, match=match):
        model.eagenerate(PROMPT, max_new_tokens=4)


def test_jakiro_star_builds_only_its_static_drafter(monkeypatch):
    def no_dynamic_drafter(*args, **kwargs):
        raise AssertionError("StarEaModel built a dynamic drafter")

    monkeypatch.setattr(ea_model, "TreeDrafter", no_dynamic_drafter)
    target = weak_context_target("llama", vocab_size=16)
    model = StarEaModel(target, imitating_draft(target), None, "cpu8", stop_token_ids=[])
    assert isinstance(model.drafter, StaticTreeDrafter) and model.drafter.draft is model.ea_layer
    with pytest.raises(ValueError, match="static tree"):
        model.set_tree(8, 2, 2)
    assert isinstance(model.drafter, StaticTreeDrafter)
