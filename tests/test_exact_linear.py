"""Exact verification's linear layers (jakiro/target/exact_linear.py): finding the batch-dependent ones, running them
one row at a time, and the resulting bit-identity of tree verification with plain decoding."""

import pytest
import torch
from torch import nn

from jakiro.target.exact_linear import one_row_at_a_time, row_inconsistent_linears
from test_lossless import prompts_for
from tiny_models import tiny_target

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


class BatchDependentLinear(nn.Linear):
    """A linear layer whose result depends on how many rows it multiplies, as some kernels' rounding does."""

    def forward(self, x):
        return super().forward(x) + 1e-3 * (x.shape[-2] - 1)


class RowByRowLinear(nn.Linear):
    """A linear layer computed one row at a time: row-consistent by construction."""

    def forward(self, x):
        return torch.cat([super(RowByRowLinear, self).forward(x[..., i:i + 1, :]) for i in range(x.shape[-2])], -2)


def test_probe_finds_the_batch_dependent_layers_only():
    model = nn.Sequential(RowByRowLinear(4, 6), BatchDependentLinear(6, 4), BatchDependentLinear(6, 4),
                          RowByRowLinear(4, 4))
    assert row_inconsistent_linears(model) == [model[1], model[2]]


def test_one_row_at_a_time_gives_single_row_bits_and_restores_the_layer():
    layer = BatchDependentLinear(4, 3)
    rows = torch.randn(1, 5, 4)
    alone = torch.cat([layer(rows[:, i:i + 1]) for i in range(5)], dim=1)
    assert not torch.equal(layer(rows), alone)
    with one_row_at_a_time([layer]):
        assert torch.equal(layer(rows), alone)
    assert not torch.equal(layer(rows), alone) and "forward" not in layer.__dict__
    # a forward set on the instance (as accelerate's hooks do) is wrapped, then put back
    hooked = layer.forward
    layer.forward = lambda x: hooked(x) * 2
    with one_row_at_a_time([layer]):
        assert torch.equal(layer(rows), 2 * alone)
    assert torch.equal(layer(rows), 2 * layer.__class__.forward(layer, rows))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_exact_verification_is_bit_identical_to_plain_steps_in_float32(family):
    """fp32 matmul kernels differ between one row and many on common CPUs; exact verification must still give every
    node plain decoding's logits, bit for bit."""
    from jakiro.target import TargetModel
    from jakiro.decoding.tree import DraftTree

    model = tiny_target(family, vocab_size=64)
    tree = DraftTree.from_parents(torch.randint(0, 64, (9,), generator=torch.Generator().manual_seed(0)),
                                  torch.tensor([-1, 0, 0, 1, 1, 2, 3, 3, 6]))
    prompt = prompts_for(64, 2)[1]
    exact = TargetModel(model, exact_verification=True)
    exact.prefill(prompt)
    logits, features = exact.verify(tree)
    for node in range(len(tree)):
        plain = TargetModel(model)
        plain.prefill(prompt)
        for step in tree.mask[node].nonzero().flatten().tolist():
            node_logits, node_feature = plain.step(int(tree.tokens[step]))
        assert torch.equal(node_feature, features[node]) and torch.equal(node_logits, logits[node]), f"node {node}"
