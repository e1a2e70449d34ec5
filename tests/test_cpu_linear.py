"""Verification kernels for a CPU: few-row linear maps as W @ X^T (:mod:`jakiro.common.cpu_linear`) and grouped KV heads
inside SDPA (:mod:`jakiro.target.gqa_attention`) give what the plain kernels give, and are used where they apply."""

import pytest
import torch
from torch.nn import functional

import jakiro.target.gqa_attention as gqa
from jakiro.common.cpu_linear import MAX_ROWS, few_row_linear
from jakiro.target import TargetModel
from jakiro.decoding.tree import full_tree
from tiny_models import tiny_target


@pytest.mark.parametrize("shape", [(2, 16), (1, 5, 16), (3, 4, 16), (MAX_ROWS, 16)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_few_row_linear_equals_linear(shape, with_bias):
    x, weight = torch.randn(*shape), torch.randn(40, 16)
    bias = torch.randn(40) if with_bias else None
    with torch.no_grad():
        out = few_row_linear(x, weight, bias)
    assert out.shape == (*shape[:-1], 40)
    torch.testing.assert_close(out, functional.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


def test_few_row_linear_keeps_linear_where_it_does_not_apply(monkeypatch):
    calls = []
    monkeypatch.setattr(functional, "linear", lambda *args: calls.append(args[0].shape) or torch.zeros(1))
    weight = torch.randn(40, 16)
    with torch.no_grad():
        few_row_linear(torch.randn(1, 16), weight)  # one row: plain decoding
        few_row_linear(torch.randn(MAX_ROWS + 1, 16), weight)  # a prefill
        few_row_linear(torch.randn(4, 16).bfloat16(), weight.bfloat16())  # not measured
        few_row_linear(torch.randn(4, 16), weight)  # the W @ X^T case
    few_row_linear(torch.randn(4, 16), weight)  # autograd: training
    assert calls == [(1, 16), (MAX_ROWS + 1, 16), (4, 16), (4, 16)]


@pytest.mark.parametrize("exact", [False, True])
def test_target_logits_use_the_head_module_only_under_exact_verification(exact):
    model = tiny_target("llama", vocab_size=64)
    target = TargetModel(model, exact_verification=exact)
    features = torch.randn(1, 5, model.config.hidden_size)
    calls = []
    model.lm_head.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    with torch.no_grad():
        logits, one_row = target.logits(features), target.logits(features[0, -1])
        expected = functional.linear(features, model.lm_head.weight)
        expected_one_row = functional.linear(features[0, -1], model.lm_head.weight)
    assert logits.shape == (1, 5, 64) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one_row, expected_one_row, rtol=0, atol=0)  # plain decoding: the same kernel
    assert calls == ([(1, 5, model.config.hidden_size), (model.config.hidden_size,)] if exact else [])


def test_tree_verification_runs_grouped_heads_in_the_kernel_with_the_same_result(monkeypatch):
    model = tiny_target("llama", vocab_size=64)  # 4 query heads, 2 KV heads, sdpa
    assert model.config._attn_implementation == "sdpa"
    target = TargetModel(model)
    calls = []
    spy = lambda *args, **kwargs: calls.append(args[1].shape) or gqa.gqa_sdpa_attention(*args, **kwargs)  # noqa: E731
    monkeypatch.setitem(gqa.ALL_ATTENTION_FUNCTIONS._global_mapping, gqa.NAME, spy)
    tree = full_tree(torch.tensor([5, 9, 11, 12, 13, 7]))
    target.prefill(torch.tensor([[3, 9, 27, 17, 4, 8, 1]]))
    logits, features = target.verify(tree)
    assert len(calls) == model.config.num_hidden_layers and model.config._attn_implementation == "sdpa"
    target.crop(7)
    target.cpu_kernels = False  # transformers' own sdpa (the KV heads repeated) and the head's own kernel
    plain_logits, plain_features = target.verify(tree)
    assert len(calls) == model.config.num_hidden_layers
    torch.testing.assert_close(features, plain_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, plain_logits, rtol=1e-5, atol=1e-5)
