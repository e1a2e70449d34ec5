"""draft.init_from_target: the draft's decoder layer copied from a tiny target's last decoder layer where shapes
match (dense Llama, Qwen2 with attention biases, Mixtral's fused experts), the rest left at its random values and
named in the report; the init_draft command line."""

import pytest
import torch

from jakiro.model.draft import DraftHead, DraftHeadConfig
from jakiro.model.init_draft import main as init_draft_main
from jakiro.model.target_init import init_from_target_layer, last_decoder_layer
from tiny_models import tiny_target

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def fresh_draft(target, seed=3, **kw) -> DraftHead:
    torch.manual_seed(seed)
    return DraftHead(DraftHeadConfig.for_target(target.config, **kw))


def check_copied_and_untouched(draft, before, report, copied):
    """Every name in ``copied`` was reported copied; every other parameter kept its random value."""
    assert set(report.copied) == {f"layers.0.{name}" for name in copied}
    for name, value in draft.state_dict().items():
        if name.removeprefix("layers.0.") not in copied and not name.endswith("gate.weight"):
            assert torch.equal(value, before[name]), name


def test_dense_target_of_equal_width_fills_attention_norm_and_every_expert():
    target = tiny_target("llama", 64)
    index, layer = last_decoder_layer(target)
    assert index == 1 and layer is target.model.layers[1]
    draft = fresh_draft(target, expert_intermediate_size=128)  # = the target's intermediate_size; no input norm
    before = {k: v.clone() for k, v in draft.state_dict().items()}
    report = init_from_target_layer(draft, layer.state_dict(), index)
    mine = draft.layers[0]
    for name in ATTENTION:
        assert torch.equal(getattr(mine.self_attn, name).weight, getattr(layer.self_attn, name).weight)
    assert torch.equal(mine.post_attention_layernorm.weight, layer.post_attention_layernorm.weight)
    for expert in mine.mlp_moe.experts:
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert torch.equal(getattr(expert, proj).weight, getattr(layer.mlp, proj).weight)
    copied = [f"self_attn.{n}.weight" for n in ATTENTION] + ["post_attention_layernorm.weight"] + [
        f"mlp_moe.experts.{e}.{p}.weight" for e in range(2) for p in ("gate_proj", "up_proj", "down_proj")]
    check_copied_and_untouched(draft, before, report, copied)
    assert torch.equal(mine.mlp_moe.gate.weight, before["layers.0.mlp_moe.gate.weight"])
    assert set(report.skipped) == {"input_layernorm.weight", "layers.0.mlp_moe.gate.weight", "fc"}
    line = report.summary()
    assert line.startswith("draft.init_from_target: copied 11 tensors from target layer 1:")
    assert "input_layernorm.weight (the draft's layer has no input norm" in line and "\n" not in line


def test_with_an_input_norm_the_draft_attends_as_the_target_layer():
    """input_norm (what draft.init_from_target builds): both norms copied, and the draft layer's attention block is
    the target layer's on the same hidden states, z + Attn(RMSNorm_in(z))."""
    target = tiny_target("llama", 64)
    index, layer = last_decoder_layer(target)
    draft = fresh_draft(target, expert_intermediate_size=128, input_norm=True)
    report = init_from_target_layer(draft, layer.state_dict(), index)
    assert "layers.0.input_layernorm.weight" in report.copied and set(report.skipped) == {
        "layers.0.mlp_moe.gate.weight", "fc"}
    mine = draft.layers[0]
    assert torch.equal(mine.input_layernorm.weight, layer.input_layernorm.weight)
    z = 3.0 * torch.randn(1, 5, 64)
    positions = torch.arange(5)[None]
    cos_sin = target.model.rotary_emb(z, positions)
    want = layer.self_attn(layer.input_layernorm(z), position_embeddings=cos_sin, attention_mask=None)[0]
    got = mine.self_attn(mine.input_layernorm(z), position_embeddings=draft.rotary_emb(z, positions),
                         attention_mask=None)[0]
    torch.testing.assert_close(got, want)
    # the forward uses the norm: a draft without it gives other features from the same weights
    plain = DraftHead(DraftHeadConfig.for_target(target.config, expert_intermediate_size=128))
    state = {k: v for k, v in draft.state_dict().items() if "input_layernorm" not in k}
    plain.load_state_dict(state)
    for d in (draft, plain):
        d.bind_target_modules(target.get_input_embeddings(), target.get_output_embeddings())
    ids, feats = torch.randint(0, 64, (1, 5)), torch.randn(1, 5, 64)
    assert not torch.allclose(draft(feats, ids, positions).head1, plain(feats, ids, positions).head1)


def test_experts_of_another_width_are_left_and_named():
    target = tiny_target("llama", 64)
    draft = fresh_draft(target)  # the reference's experts: hidden-size wide (64), the target's MLP is 128 wide
    before = {k: v.clone() for k, v in draft.state_dict().items()}
    report = init_from_target_layer(draft, last_decoder_layer(target)[1].state_dict(), 1)
    check_copied_and_untouched(draft, before, report,
                               [f"self_attn.{n}.weight" for n in ATTENTION] + ["post_attention_layernorm.weight"])
    assert report.skipped["layers.0.mlp_moe.experts"] == ("64 wide, the target's MLP 128: "
                                                         "draft.expert_intermediate_size=128 copies it")
    assert report.skipped["layers.0.mlp_moe.gate.weight"] == "the target's MLP is dense: no router"
    assert "layers.0.mlp_moe.experts (64 wide" in report.summary()


def test_attention_biases_the_draft_lacks_are_reported():
    target = tiny_target("qwen2", 64)
    layer = last_decoder_layer(target)[1]
    draft = fresh_draft(target, num_experts=1, experts_per_token=1, parallel_head=False, expert_intermediate_size=128)
    report = init_from_target_layer(draft, layer.state_dict(), 1)
    assert torch.equal(draft.layers[0].self_attn.q_proj.weight, layer.self_attn.q_proj.weight)
    assert torch.equal(draft.layers[0].mlp_moe.experts[0].down_proj.weight, layer.mlp.down_proj.weight)
    for name in ("q_proj", "k_proj", "v_proj"):
        assert report.skipped[f"self_attn.{name}.bias"] == "the draft has no counterpart"
    assert "layers.0.mlp_moe.gate.weight" not in report.skipped  # a one-expert draft has no router


def test_fused_mixture_of_experts_expert_by_expert():
    target = tiny_target("mixtral", 64)  # 4 experts of width 128, top-2
    layer = last_decoder_layer(target)[1]
    draft = fresh_draft(target, num_experts=4, experts_per_token=2, expert_intermediate_size=128)
    report = init_from_target_layer(draft, layer.state_dict(), 1)
    gate_up, down = layer.mlp.experts.gate_up_proj, layer.mlp.experts.down_proj
    for e, expert in enumerate(draft.layers[0].mlp_moe.experts):
        assert torch.equal(expert.gate_proj.weight, gate_up[e, :128])
        assert torch.equal(expert.up_proj.weight, gate_up[e, 128:])
        assert torch.equal(expert.down_proj.weight, down[e])
    gate = draft.layers[0].mlp_moe.gate.weight
    assert torch.equal(gate[:4], layer.mlp.gate.weight) and gate.shape[0] == 8  # + 4 CEPD rows, left random
    assert "layers.0.mlp_moe.gate.weight[4:]" in report.skipped
    # the copied experts compute the target's: one expert's SwiGLU output on some input
    u = torch.randn(3, 64)
    g, up = torch.nn.functional.linear(u, gate_up[2]).chunk(2, dim=-1)
    torch.testing.assert_close(draft.layers[0].mlp_moe.experts[2](u),
                               torch.nn.functional.linear(torch.nn.functional.silu(g) * up, down[2]))
    small = tiny_target("mixtral", 64, num_local_experts=2)  # fewer experts than the draft: the first ones
    small_layer = last_decoder_layer(small)[1]
    report = init_from_target_layer(draft, small_layer.state_dict(), 1)
    assert torch.equal(draft.layers[0].mlp_moe.experts[1].down_proj.weight, small_layer.mlp.experts.down_proj[1])
    assert torch.equal(draft.layers[0].mlp_moe.experts[2].down_proj.weight, down[2])  # left as it was
    assert report.skipped["layers.0.mlp_moe.experts.2-3"] == "the target has only 2 experts"
    assert report.skipped["layers.0.mlp_moe.gate.weight"] == "the target's router has 2 experts"


def test_init_draft_command_line(tmp_path, capsys):
    target = tiny_target("llama", 64)
    target.save_pretrained(tmp_path / "target")
    out = tmp_path / "draft"
    assert init_draft_main(["--base-model-path", str(tmp_path / "target"), "--out", str(out),
                            "--expert-intermediate-size", "128", "--init-from-target"]) == 0
    assert "draft.init_from_target: copied 12 tensors from target layer 1" in capsys.readouterr().err  # + input norm
    draft = DraftHead.from_pretrained(out)
    layer = last_decoder_layer(target)[1]
    assert torch.equal(draft.layers[0].self_attn.o_proj.weight, layer.self_attn.o_proj.weight)
    assert torch.equal(draft.layers[0].mlp_moe.experts[1].up_proj.weight, layer.mlp.up_proj.weight)
    assert draft.config.expert_intermediate_size == 128 and draft.config.input_norm
    assert torch.equal(draft.layers[0].input_layernorm.weight, layer.input_layernorm.weight)
    assert init_draft_main(["--base-model-path", str(tmp_path / "target"), "--out", str(tmp_path / "plain")]) == 0
    plain = DraftHead.from_pretrained(tmp_path / "plain")
    assert not torch.equal(plain.layers[0].self_attn.o_proj.weight, layer.self_attn.o_proj.weight)


def test_last_decoder_layer_needs_layers():
    with pytest.raises(ValueError, match="decoder layers"):
        last_decoder_layer(torch.nn.Linear(2, 2))
