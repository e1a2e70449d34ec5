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
    assert packs.kinds and all(1 <= limit <= 16 and limit & (limit - 1) == 0 for _, limit in packs.kinds.values())
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
    monkeypatch.setattr(packed_linear, "_packed_forward", lambda packed, bias: lambda x: torch.zeros(
        *x.shape[:-1], 5, dtype=x.dtype))  # a packed kernel that gets it wrong
    monkeypatch.setattr(packed_linear, "_packable", lambda: True)
    monkeypatch.setattr(packed_linear, "_pack", lambda weight: weight)
    packs = PackedLinears(model, probe_rows=4)
    assert [packed for packed, _ in packs.kinds.values()] == [False]
    x = torch.randn(3, 6).to(torch.bfloat16)
    with packs.applied():
        assert torch.equal(model(x), functional.linear(x, model[0].weight))
