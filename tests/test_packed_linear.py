"""Tests of jakiro.target.packed_linear: prepacked, row-chunked linear layers that keep each row's bits."""

import pytest
import torch
from torch import nn
from torch.nn import functional
from tiny_models import tiny_target

from jakiro.target.packed_linear import PackedLinears, exact_row_limit

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_applied_layers_give_each_row_its_bits_alone(dtype):
    model = tiny_target("llama", vocab_size=128).to(dtype).eval()
    packs = PackedLinears(model, probe_rows=16)
    assert packs.kinds and all(1 <= k.rows <= 16 and k.rows & (k.rows - 1) == 0 and k.f_linear_bits
                               for k in packs.kinds.values())
    layer = model.lm_head
    x = torch.randn(1, 40, layer.in_features).to(dtype)
    alone = torch.cat([functional.linear(x[:, i:i + 1], layer.weight) for i in range(40)], dim=1)
    plain = layer(x)
    with packs.applied():
        assert "forward" in layer.__dict__
        chunked = layer(x)
    assert "forward" not in layer.__dict__  # restored
    assert torch.equal(layer(x), plain)
    assert torch.equal(chunked, alone)  # 40 rows in chunks of the probed limit: each row's bits alone


def test_exact_row_limit_finds_where_rows_stop_matching():
    weight = torch.randn(8, 6)

    def rowwise(x):  # each row's products summed on its own: the same bits in any batch
        return (x[:, None, :] * weight[None]).sum(-1)

    def switching(x):  # a kernel that rounds differently from 6 rows on
        return rowwise(x) + 1e-3 if len(x) >= 6 else rowwise(x)

    assert exact_row_limit(rowwise, 6, torch.float32, probe_rows=16) == 16
    assert exact_row_limit(switching, 6, torch.float32, probe_rows=16) == 4  # 5 rows still match: rounded to 4


def test_packed_weights_only_where_they_match_f_linear(monkeypatch):
    import jakiro.target.packed_linear as packed_linear
    model = nn.Sequential(nn.Linear(6, 5, bias=False)).to(torch.bfloat16)
    monkeypatch.setattr(packed_linear, "packed_forward", lambda packed, bias: lambda x: torch.zeros(
        *x.shape[:-1], 5, dtype=x.dtype))  # a packed kernel that gets it wrong
    monkeypatch.setattr(packed_linear, "packable", lambda dtype: True)
    monkeypatch.setattr(packed_linear, "pack_weight", lambda weight: weight)
    packs = PackedLinears(model, probe_rows=4)
    assert [k.packed for k in packs.kinds.values()] == [False]
    x = torch.randn(3, 6).to(torch.bfloat16)
    with packs.applied():
        assert torch.equal(model(x), functional.linear(x, model[0].weight))


def _rowwise(weight):
    def forward(x):  # each row's products summed on its own, in another order than F.linear: same bits in any batch
        return (x[..., None, :] * weight).flip(-1).sum(-1)
    return forward


def _row_dependent(weight):
    def forward(x):  # F.linear, off by a rounding step for every batch of 2 rows or more (row limit 1)
        out = functional.linear(x, weight)
        return out if out.reshape(-1, out.shape[-1]).shape[0] == 1 else out * (1 + 2 ** -20)
    return forward


def test_batch_invariant_mode_takes_the_kernel_that_batches_more_rows(monkeypatch):
    """Where F.linear batches no rows exactly and the packed kernel rounds unlike F.linear but keeps every row's
    bits in any batch: the reference mode keeps F.linear a row at a time, batch-invariant mode takes the packed
    kernel in chunks of the probed limit, and each row gets that kernel's bits alone."""
    import jakiro.target.packed_linear as packed_linear
    model = nn.Sequential(nn.Linear(6, 5, bias=False))
    weight = model[0].weight.detach()
    monkeypatch.setattr(packed_linear, "_plain_forward", lambda layer: _row_dependent(layer.weight))
    monkeypatch.setattr(packed_linear, "packed_forward", lambda packed, bias: _rowwise(packed))
    monkeypatch.setattr(packed_linear, "packable", lambda dtype: True)
    monkeypatch.setattr(packed_linear, "pack_weight", lambda weight: weight.detach())
    x = torch.randn(10, 6)
    assert not torch.equal(_rowwise(weight)(x[:1]), functional.linear(x[:1], weight))  # the kernels round apart

    reference = PackedLinears(model, probe_rows=8)
    assert list(reference.kinds.values()) == [packed_linear.Kind(packed=False, rows=1, f_linear_bits=True)]
    with reference.applied():
        assert torch.equal(model(x), torch.cat([functional.linear(x[i:i + 1], weight) for i in range(10)]))

    invariant = PackedLinears(model, probe_rows=8, batch_invariant=True)
    assert list(invariant.kinds.values()) == [packed_linear.Kind(packed=True, rows=8, f_linear_bits=False)]
    with invariant.applied():
        batched = model(x)
    assert torch.equal(batched, torch.cat([_rowwise(weight)(x[i:i + 1]) for i in range(10)]))


def test_batch_invariant_layers_give_each_row_the_same_bits_in_any_batch():
    """On this CPU's real kernels, float32: whichever kernel batch-invariant mode picks for a shape, a row's
    output does not depend on the rows beside it."""
    model = tiny_target("llama", vocab_size=128).eval()
    packs = PackedLinears(model, probe_rows=16, batch_invariant=True)
    x = torch.randn(40, model.config.hidden_size)
    layer = model.lm_head
    with packs.applied():
        batched = layer(x)
        assert torch.equal(batched, torch.cat([layer(x[i:i + 1]) for i in range(40)]))
        assert torch.equal(batched[7:30], layer(x[7:30]))


def test_a_cpu_without_the_packed_kernel_keeps_f_linear(monkeypatch):
    """oneDNN refuses to prepack bf16 weights on CPUs without AVX-512 or AVX-NE-CONVERT: F.linear then."""
    import jakiro.target.packed_linear as packed_linear

    def refuse(weight):
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert")

    monkeypatch.setattr(packed_linear, "pack_weight", refuse)
    model = nn.Sequential(nn.Linear(6, 5, bias=False)).to(torch.bfloat16)
    packs = PackedLinears(model, probe_rows=4, batch_invariant=True)
    assert [(k.packed, k.f_linear_bits) for k in packs.kinds.values()] == [(False, True)]
    x = torch.randn(3, 6).to(torch.bfloat16)
    with packs.applied():
        assert torch.equal(model(x)[:1], functional.linear(x[:1], model[0].weight))
