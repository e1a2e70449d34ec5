"""Tests of jakiro.target.packed_verification: a float32 CPU target's tree rows multiplied on prepacked weights."""

import pytest
import torch
from torch import nn
from torch.nn import functional
from tiny_models import tiny_target

from jakiro.decoding.tree import full_tree
from jakiro.target import TargetModel, packed_verification
from jakiro.target.packed_verification import MAX_HEAD_ROWS, MAX_ROWS, PackedTreeLinears

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture
def marked(monkeypatch):
    """Stand-in kernels: packing keeps the weight, and a packed product is F.linear's plus 1000 (so it shows)."""
    monkeypatch.setattr(packed_verification, "packable", lambda dtype: True)
    monkeypatch.setattr(packed_verification, "pack_weight", lambda weight: weight.clone())
    monkeypatch.setattr(packed_verification, "packed_forward",
                        lambda packed, bias: lambda x: functional.linear(x, packed, bias) + 1000)


def packs_of(model) -> PackedTreeLinears:
    packs = PackedTreeLinears.for_target(model.get_decoder(), model.get_output_embeddings())
    assert packs is not None
    return packs


def took_packed(packs, layer, x, max_rows=MAX_HEAD_ROWS) -> bool:
    out = packs.forward(layer, x, max_rows)
    plain = functional.linear(x, layer.weight, layer.bias)
    assert out.shape == plain.shape
    return bool((out - plain).abs().min() > 500)


def test_packed_weights_for_tree_rows_only(marked):
    model = tiny_target("qwen2", vocab_size=64)  # q, k, v with a bias
    packs = packs_of(model)
    layer = model.get_decoder().layers[0].self_attn.q_proj
    assert layer in packs.layers and layer.bias is not None and packs.head is model.lm_head
    hidden = layer.in_features
    with torch.inference_mode():
        assert not took_packed(packs, layer, torch.randn(1, 1, hidden))  # plain decoding
        assert took_packed(packs, layer, torch.randn(1, 2, hidden))
        assert took_packed(packs, layer, torch.randn(1, MAX_ROWS, hidden), MAX_ROWS)
        assert not took_packed(packs, layer, torch.randn(1, MAX_ROWS + 1, hidden), MAX_ROWS)  # a prefill
        assert took_packed(packs, model.lm_head, torch.randn(MAX_HEAD_ROWS, hidden))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not took_packed(packs, layer, torch.randn(4, hidden))
    assert not took_packed(packs, layer, torch.randn(4, hidden).requires_grad_())  # autograd: training


def test_target_verifies_trees_on_the_packed_weights_and_decodes_on_its_own(marked):
    model = tiny_target("llama", vocab_size=64)
    target = TargetModel(model)
    assert target.packed is not None
    target.prefill(torch.tensor([[3, 9, 27, 17]]))
    step_logits, _ = target.step(5)
    target.crop(4)
    tree_logits, _ = target.verify(full_tree(torch.tensor([5, 9, 11])))
    assert step_logits.abs().max() < 500 < tree_logits.abs().min()  # one token: F.linear; a tree: packed
    target.crop(4)
    one_node, _ = target.verify(full_tree(torch.tensor([5])))
    torch.testing.assert_close(one_node[0], step_logits, rtol=0, atol=0)
    target.crop(4)
    target.cpu_kernels = False
    assert target.verify(full_tree(torch.tensor([5, 9, 11])))[0].abs().max() < 500
    assert TargetModel(model, exact_verification=True).packed is None


def test_refresh_repacks_what_changed_since(marked):
    model = tiny_target("llama", vocab_size=64)
    packs = packs_of(model)
    layer = model.get_decoder().layers[0].mlp.down_proj
    x = torch.randn(3, layer.in_features)

    def current():  # the packed product is the layer's as it is now
        return torch.equal(packs.forward(layer, x), layer(x) + 1000)

    with torch.no_grad():
        assert current()
        layer.weight.mul_(2)  # in place: the version counter moves
        assert not current()  # stale until the next refresh
        packs.refresh()
        assert current()
        layer.weight.data.add_(0.5)  # through .data: the version counter does not move, the sampled elements do
        packs.refresh()
        assert current()
        layer.weight = nn.Parameter(torch.randn_like(layer.weight))  # replaced
        packs.refresh()
        assert current()
    layer.to(torch.float64)  # no longer float32: its copy dropped, F.linear again
    packs.refresh()
    assert layer not in packs._packed
    x64 = x.double()
    torch.testing.assert_close(packs.forward(layer, x64), functional.linear(x64, layer.weight), rtol=0, atol=0)
    layer.float()
    packs.refresh()
    with torch.no_grad():
        assert took_packed(packs, layer, x)


def test_targets_it_does_not_pack(marked, monkeypatch):
    assert PackedTreeLinears.for_target(*parts(tiny_target("llama", vocab_size=64).bfloat16())) is None
    hooked = tiny_target("llama", vocab_size=64)
    hooked.get_decoder().layers[0].mlp.up_proj.forward = lambda x: x  # e.g. accelerate's offloading hook
    assert PackedTreeLinears.for_target(*parts(hooked)) is None
    monkeypatch.setattr(packed_verification, "MAX_PACKED_BYTES", 1000)
    assert PackedTreeLinears.for_target(*parts(tiny_target("llama", vocab_size=64))) is None
    monkeypatch.undo()
    monkeypatch.setattr(packed_verification, "packable", lambda dtype: False)  # no oneDNN linear in this torch
    assert PackedTreeLinears.for_target(*parts(tiny_target("llama", vocab_size=64))) is None

    def refuse(weight):
        raise RuntimeError("no kernel for this CPU")
    monkeypatch.setattr(packed_verification, "packable", lambda dtype: True)
    monkeypatch.setattr(packed_verification, "pack_weight", refuse)
    assert PackedTreeLinears.for_target(*parts(tiny_target("llama", vocab_size=64))) is None


def parts(model):
    return model.get_decoder(), model.get_output_embeddings()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_real_kernels_agree_with_f_linear_to_rounding(family):
    model = tiny_target(family, vocab_size=128)
    target = TargetModel(model)
    if target.packed is None:
        pytest.skip("this torch build has no oneDNN prepacked float32 linear")
    tree = full_tree(torch.tensor([5, 9, 11, 12, 13, 7, 40, 41]))
    target.prefill(torch.tensor([[3, 9, 27, 17, 4, 8, 1]]))
    logits, features = target.verify(tree)
    target.crop(7)
    packs, target.packed = target.packed, None
    plain_logits, plain_features = target.verify(tree)
    torch.testing.assert_close(features, plain_features, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, plain_logits, rtol=1e-4, atol=1e-5)
    layer = model.get_decoder().layers[0].mlp.gate_proj
    x = torch.randn(5, layer.in_features)
    with torch.inference_mode():
        torch.testing.assert_close(packs.forward(layer, x), layer(x), rtol=1e-5, atol=1e-5)
