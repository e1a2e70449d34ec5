"""Draft head tests: MoE equations checked by hand, checkpoint layout and loading, training use, caching, init CLI.

The MoE reference equations (jakiro-reference.md §1.3), per position with gate logits g = W_g u:

    h1 = sum over the top-k of g[:N] of softmax(top-k logits)_e * E_e(u)
    h2 = b_top * E_top(u) - b_low * E_low(u),  (b_top, b_low) = sorted softmax of the top two of g[N:]

are recomputed here from the module's own weights with plain matrix products, never with the module's code.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from jakiro.model.draft import DraftCache, DraftHead, DraftHeadConfig
from jakiro.model.moe import MixtureOfExperts
from tiny_models import tiny_draft, tiny_target

H = 16
REPO_ROOT = Path(__file__).resolve().parents[1]


# -- helpers ------------------------------------------------------------------------------------------------------
def make_moe(num_experts, k, parallel_head, seed=0, hidden=H, intermediate=H):
    torch.manual_seed(seed)
    return MixtureOfExperts(hidden, intermediate, num_experts, k, parallel_head)


def expert_by_hand(moe, index, u):
    """down(SiLU(gate u) * up u) from the expert's raw weight matrices."""
    expert = moe.experts[index]
    gate = u @ expert.gate_proj.weight.T
    up = u @ expert.up_proj.weight.T
    return (gate * torch.sigmoid(gate) * up) @ expert.down_proj.weight.T


def gate_logits(moe, u):
    return u @ moe.gate.weight.T


def bound_draft(target, **kwargs):
    draft = tiny_draft(target, **kwargs)
    draft.bind_target_modules(target.get_input_embeddings(), target.get_output_embeddings())
    return draft


def draft_inputs(batch=1, length=5, vocab=128, hidden=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, length, hidden, generator=generator)
    ids = torch.randint(0, vocab, (batch, length), generator=generator)
    positions = torch.arange(length)[None].expand(batch, length)
    return features, ids, positions


# -- MoE: hand-computed equations ---------------------------------------------------------------------------------
def test_two_experts_with_parallel_head_match_reference_equations():
    moe = make_moe(2, 2, True)
    u = torch.randn(6, H)
    with torch.no_grad():
        out = moe(u, with_head2=True)
        g = gate_logits(moe, u)
        e0, e1 = expert_by_hand(moe, 0, u), expert_by_hand(moe, 1, u)
    assert moe.gate.weight.shape == (4, H)

    a = torch.softmax(g[:, 0:2], dim=-1)
    h1 = a[:, 0:1] * e0 + a[:, 1:2] * e1
    b = torch.softmax(g[:, 2:4], dim=-1)
    top_is_0 = (g[:, 2] > g[:, 3])[:, None]
    b_top, b_low = b.max(dim=-1, keepdim=True).values, b.min(dim=-1, keepdim=True).values
    h2 = torch.where(top_is_0, b_top * e0 - b_low * e1, b_top * e1 - b_low * e0)

    torch.testing.assert_close(out.head1, h1, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.head2, h2, atol=1e-5, rtol=0)
    # both orders of the contrastive pair occur among the positions (otherwise the test would not be telling)
    assert 0 < int(top_is_0.sum()) < u.shape[0]


def test_head2_is_not_computed_unless_asked():
    moe = make_moe(2, 2, True)
    assert moe(torch.randn(3, H)).head2 is None


@pytest.mark.parametrize("parallel_head", [False, True])
def test_four_experts_top2_renormalises_over_the_chosen_two(parallel_head):
    moe = make_moe(4, 2, parallel_head, seed=3)
    assert moe.gate.weight.shape == (8 if parallel_head else 4, H)
    u = torch.randn(8, H)
    with torch.no_grad():
        out = moe(u, with_head2=parallel_head)
        g = gate_logits(moe, u)
        experts = torch.stack([expert_by_hand(moe, i, u) for i in range(4)], dim=1)  # [N, 4, H]
    top_logits, top_ids = g[:, :4].topk(2, dim=-1)
    weights = torch.softmax(top_logits, dim=-1)  # softmax over the two chosen logits only
    h1 = (weights[..., None] * experts.gather(1, top_ids[..., None].expand(-1, -1, H))).sum(1)
    torch.testing.assert_close(out.head1, h1, atol=1e-5, rtol=0)
    assert torch.equal(out.expert_ids, top_ids)
    if parallel_head:
        pair_logits, pair_ids = g[:, 4:].topk(2, dim=-1)
        b = torch.softmax(pair_logits, dim=-1)
        chosen = experts.gather(1, pair_ids[..., None].expand(-1, -1, H))
        h2 = b[:, 0:1] * chosen[:, 0] - b[:, 1:2] * chosen[:, 1]
        torch.testing.assert_close(out.head2, h2, atol=1e-5, rtol=0)


def test_unselected_expert_contributes_nothing():
    moe = make_moe(4, 2, False, seed=5)
    u = torch.randn(8, H)
    with torch.no_grad():
        before = moe(u)
        ids = before.expert_ids
        # an expert that position 0 does not route to
        unused = next(e for e in range(4) if e not in ids[0].tolist())
        for proj in (moe.experts[unused].gate_proj, moe.experts[unused].up_proj, moe.experts[unused].down_proj):
            proj.weight.add_(torch.randn_like(proj.weight))
        after = moe(u)
    untouched = ~(ids == unused).any(dim=-1)
    assert untouched[0]
    assert torch.equal(after.head1[untouched], before.head1[untouched])
    if (~untouched).any():  # positions that do use it must change (the perturbation is real)
        assert not torch.allclose(after.head1[~untouched], before.head1[~untouched])


def test_single_expert_is_the_eagle2_mlp():
    moe = make_moe(1, 1, False)
    assert moe.gate is None
    assert [name for name, _ in moe.named_parameters() if name.startswith("gate")] == []
    u = torch.randn(4, H)
    with torch.no_grad():
        out = moe(u)
        torch.testing.assert_close(out.head1, expert_by_hand(moe, 0, u), atol=1e-6, rtol=0)
    assert out.head2 is None
    assert torch.equal(out.expert_ids, torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="parallel head"):
        moe(u, with_head2=True)


@pytest.mark.parametrize("num_experts, k, parallel_head", [(2, 2, True), (4, 2, True), (4, 3, False), (1, 1, False)])
def test_with_experts_returns_chosen_experts_strongest_first(num_experts, k, parallel_head):
    moe = make_moe(num_experts, k, parallel_head, seed=7)
    u = torch.randn(6, H)
    with torch.no_grad():
        out = moe(u, with_head2=parallel_head, with_experts=True)
        assert out.expert_outputs.shape == (6, k, H)
        if moe.gate is not None:
            logits = gate_logits(moe, u)[:, :num_experts]
            chosen = logits.gather(1, out.expert_ids)
            assert (chosen[:, :-1] >= chosen[:, 1:]).all(), "routing order must be strongest first"
            assert torch.equal(out.expert_ids, logits.topk(k, dim=-1).indices)
        for n in range(6):
            for slot in range(k):
                expert = moe.experts[int(out.expert_ids[n, slot])]
                torch.testing.assert_close(out.expert_outputs[n, slot], expert(u[n]), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "num_experts, k, parallel_head, match",
    [(2, 3, True, "experts_per_token"), (1, 2, False, "experts_per_token"), (2, 0, False, "experts_per_token"),
     (1, 1, True, "parallel head")],
)
def test_invalid_moe_construction(num_experts, k, parallel_head, match):
    with pytest.raises(ValueError, match=match):
        MixtureOfExperts(H, H, num_experts, k, parallel_head)


# -- checkpoint layout and persistence ----------------------------------------------------------------------------
def test_state_dict_keys_follow_the_reference_layout():
    target = tiny_target()
    draft = tiny_draft(target)  # H=64, 4 heads of 16, 2 kv heads, 2 experts, parallel head
    proj = ("gate_proj", "up_proj", "down_proj")
    expected = {
        "fc.weight": (64, 128),
        "fc.bias": (64,),
        "layers.0.self_attn.q_proj.weight": (64, 64),
        "layers.0.self_attn.k_proj.weight": (32, 64),
        "layers.0.self_attn.v_proj.weight": (32, 64),
        "layers.0.self_attn.o_proj.weight": (64, 64),
        "layers.0.post_attention_layernorm.weight": (64,),
        "layers.0.mlp_moe.gate.weight": (4, 64),
        **{f"layers.0.mlp_moe.experts.{e}.{p}.weight": (64, 64) for e in (0, 1) for p in proj},
    }
    state = draft.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    # rotary buffers exist but are not persistent, so they are not in the checkpoint
    assert all(name.startswith("rotary_emb.") for name, _ in draft.named_buffers())


def test_no_fc_bias_key_when_bias_is_off():
    target = tiny_target()
    config = DraftHeadConfig.for_target(target.config, bias=False)
    assert "fc.bias" not in DraftHead(config).state_dict()


def test_save_and_load_round_trip(tmp_path):
    target = tiny_target()
    draft = bound_draft(target, num_experts=4, experts_per_token=2)
    draft.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]

    loaded = DraftHead.from_pretrained(tmp_path)
    assert loaded.config == draft.config
    original, restored = draft.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name

    loaded.bind_target_modules(target.get_input_embeddings(), target.get_output_embeddings())
    features, ids, positions = draft_inputs()
    with torch.no_grad():
        a = draft(features, ids, positions, with_head2=True, with_experts=True)
        b = loaded(features, ids, positions, with_head2=True, with_experts=True)
    for x, y in [(a.head1, b.head1), (a.head2, b.head2), (a.expert_features, b.expert_features)]:
        assert torch.equal(x, y)


def test_reference_style_config_loads():
    raw = {
        "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 11008,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192, "rope_theta": 500000.0, "num_local_experts": 2,
        "num_experts_per_tok": 2, "bias": False, "torch_dtype": "float16", "model_type": "llama",
        "num_hidden_layers": 1,
    }
    config = DraftHeadConfig.from_dict(raw)
    assert config.rope_parameters["rope_theta"] == 500000.0
    assert config.parallel_head is True
    assert config.bias is False
    assert config.expert_intermediate_size == 64  # experts are H -> H -> H, whatever intermediate_size says
    assert config.head_dim == 16 and config.rms_norm_eps == 1e-5
    draft = DraftHead(config)
    inv_freq = draft.rotary_emb.inv_freq
    torch.testing.assert_close(inv_freq[1], torch.tensor(500000.0 ** (-2 / 16)))
    assert "fc.bias" not in draft.state_dict()


def _saved_draft(directory):
    draft = tiny_draft(tiny_target())
    draft.save_pretrained(directory)
    return draft


def test_loading_directory_without_config(tmp_path):
    _saved_draft(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        DraftHead.from_pretrained(tmp_path)


def test_loading_directory_without_weights(tmp_path):
    _saved_draft(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no weights"):
        DraftHead.from_pretrained(tmp_path)


def test_loading_corrupted_safetensors(tmp_path):
    _saved_draft(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x07garbage" * 100)
    with pytest.raises(ValueError, match="model.safetensors.*corrupted"):
        DraftHead.from_pretrained(tmp_path)


def test_loading_weights_with_a_missing_key(tmp_path):
    draft = _saved_draft(tmp_path)
    state = {k: v for k, v in draft.state_dict().items() if k != "layers.0.mlp_moe.gate.weight"}
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['layers.0.mlp_moe.gate.weight'\]"):
        DraftHead.from_pretrained(tmp_path)


def test_loading_weights_with_a_wrong_shape(tmp_path):
    draft = _saved_draft(tmp_path)
    state = dict(draft.state_dict())
    state["layers.0.mlp_moe.gate.weight"] = torch.zeros(2, 64)  # a 2-logit gate for a parallel-head config
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"layers.0.mlp_moe.gate.weight.*\(2, 64\).*\(4, 64\)"):
        DraftHead.from_pretrained(tmp_path)


def test_legacy_pytorch_model_bin_loads(tmp_path):
    draft = _saved_draft(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(draft.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = DraftHead.from_pretrained(tmp_path)
    for name, tensor in draft.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


class _OpensAFile:
    """Unpickling this calls open(path, 'w'): a stand-in for arbitrary code in a malicious checkpoint."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_legacy_pickle_with_arbitrary_object_is_refused(tmp_path):
    draft = _saved_draft(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    state = dict(draft.state_dict())
    state["payload"] = _OpensAFile(str(marker))
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        DraftHead.from_pretrained(tmp_path)
    assert not marker.exists(), "the pickle was executed (weights_only=False?)"


def test_target_keys_in_checkpoint_are_ignored(tmp_path):
    draft = _saved_draft(tmp_path)
    state = dict(draft.state_dict())
    state["embed_tokens.weight"] = torch.randn(128, 64)
    state["lm_head.weight"] = torch.randn(128, 64)
    save_file(state, tmp_path / "model.safetensors")
    loaded = DraftHead.from_pretrained(tmp_path)
    assert set(loaded.state_dict()) == set(draft.state_dict())
    assert torch.equal(loaded.fc.weight, draft.fc.weight)


def test_other_unexpected_keys_are_rejected(tmp_path):
    draft = _saved_draft(tmp_path)
    state = dict(draft.state_dict())
    state["layers.0.mlp.gate_proj.weight"] = torch.zeros(64, 64)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="unexpected.*layers.0.mlp.gate_proj.weight"):
        DraftHead.from_pretrained(tmp_path)


# -- forward: training use and caching ----------------------------------------------------------------------------
def test_training_forward_shapes_and_gradient_flow():
    target = tiny_target()
    draft = bound_draft(target).train()
    features, ids, positions = draft_inputs(batch=2, length=7)
    out = draft(features, ids, positions, with_head2=True)
    assert out.head1.shape == (2, 7, 64) and out.head2.shape == (2, 7, 64)
    loss = F.mse_loss(out.head1, torch.randn_like(out.head1)) + F.mse_loss(out.head2, torch.randn_like(out.head2))
    loss.backward()
    for name in ("fc.weight", "fc.bias", "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.o_proj.weight",
                 "layers.0.post_attention_layernorm.weight", "layers.0.mlp_moe.gate.weight",
                 "layers.0.mlp_moe.experts.0.down_proj.weight", "layers.0.mlp_moe.experts.1.gate_proj.weight"):
        grad = draft.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, f"no gradient reached {name}"
    assert target.get_input_embeddings().weight.grad is None
    assert target.get_output_embeddings().weight.grad is None
    assert not any(p is target.get_input_embeddings().weight for p in draft.parameters())


def test_training_loss_through_draft_logits_trains_draft_only():
    """The reference's training loss goes through the frozen LM head; the draft must still get gradients."""
    target = tiny_target().requires_grad_(False)
    draft = bound_draft(target).train()
    features, ids, positions = draft_inputs(length=6)
    out = draft(features, ids, positions, with_head2=True)
    log_p1, log_p2 = draft.logits(out.head1).log_softmax(-1), draft.logits(out.head2).log_softmax(-1)
    loss = -(log_p1[..., 0].mean() + log_p2[..., 1].mean())
    loss.backward()
    assert draft.fc.weight.grad is not None and draft.fc.weight.grad.abs().sum() > 0
    assert draft.layers[0].mlp_moe.gate.weight.grad.abs().sum() > 0
    assert target.get_input_embeddings().weight.grad is None
    assert target.get_output_embeddings().weight.grad is None


def test_borrowed_lm_head_gets_no_gradient_through_draft_logits():
    target = tiny_target()
    draft = bound_draft(target).train()
    features, ids, positions = draft_inputs(length=6)
    out = draft(features, ids, positions)
    draft.logits(out.head1).logsumexp(-1).mean().backward()
    assert target.get_output_embeddings().weight.grad is None


def test_context_pass_with_cache_equals_one_pass():
    target = tiny_target()
    draft = bound_draft(target).eval()
    features, ids, positions = draft_inputs(length=5)
    with torch.no_grad():
        full = draft(features, ids, positions, cache=DraftCache())
        cache = DraftCache()
        first = draft(features[:, :3], ids[:, :3], positions[:, :3], cache=cache)
        second = draft(features[:, 3:], ids[:, 3:], positions[:, 3:], cache=cache)
        last_only = draft(features, ids, positions, cache=DraftCache(), last_position_only=True)
    assert len(cache) == 5
    torch.testing.assert_close(second.head1, full.head1[:, 3:], atol=1e-5, rtol=0)
    torch.testing.assert_close(first.head1, full.head1[:, :3], atol=1e-5, rtol=0)
    torch.testing.assert_close(last_only.head1, full.head1[:, -1:], atol=1e-5, rtol=0)
    # the mask matters: without it a 2-position pass over a 3-entry cache would let position 3 see position 4
    cache = DraftCache()
    draft(features[:, :3], ids[:, :3], positions[:, :3], cache=cache)
    no_causal = draft(features[:, 3:], ids[:, 3:], positions[:, 3:], cache=cache,
                      attention_mask=torch.zeros(1, 1, 2, 5))
    assert not torch.allclose(no_causal.head1[:, 0], full.head1[:, 3], atol=1e-5)


# -- init_draft CLI -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def init_draft_runs(tmp_path_factory):
    """Run the CLI invocations concurrently (each pays the torch/transformers import once)."""
    root = tmp_path_factory.mktemp("init_draft")
    target_dir = root / "target"
    tiny_target().save_pretrained(target_dir)
    (root / "empty").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cli = [sys.executable, "-m", "jakiro.model.init_draft"]
    commands = {
        "moe4": cli + ["--base-model-path", str(target_dir), "--out", str(root / "moe4"), "--num-experts", "4",
                       "--experts-per-token", "2"],
        "no_parallel": cli + ["--base-model-path", str(target_dir), "--out", str(root / "no_parallel"),
                              "--no-parallel-head"],
        "bad": cli + ["--base-model-path", str(root / "empty"), "--out", str(root / "bad")],
    }
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                    cwd=REPO_ROOT) for name, cmd in commands.items()}
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        results[name] = (proc.returncode, stdout, stderr)
    return root, results


def test_init_draft_cli_writes_a_loadable_moe_draft(init_draft_runs):
    root, results = init_draft_runs
    code, stdout, stderr = results["moe4"]
    assert code == 0, stderr
    assert "4 experts" in stdout
    draft = DraftHead.from_pretrained(root / "moe4")
    assert (draft.config.num_local_experts, draft.config.num_experts_per_tok) == (4, 2)
    assert draft.config.parallel_head is True
    assert draft.config.hidden_size == 64 and draft.config.vocab_size == 128
    assert draft.layers[0].mlp_moe.gate.weight.shape == (8, 64)


def test_init_draft_cli_no_parallel_head(init_draft_runs):
    root, results = init_draft_runs
    code, stdout, stderr = results["no_parallel"]
    assert code == 0, stderr
    assert "parallel head off" in stdout
    draft = DraftHead.from_pretrained(root / "no_parallel")
    assert draft.config.parallel_head is False
    assert draft.config.num_local_experts == 2
    assert load_file(root / "no_parallel" / "model.safetensors")["layers.0.mlp_moe.gate.weight"].shape == (2, 64)


def test_init_draft_cli_bad_base_model_path(init_draft_runs):
    root, results = init_draft_runs
    code, _, stderr = results["bad"]
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr
    assert str(root / "empty") in lines[0]
    assert not (root / "bad").exists()


# -- reduced draft vocabulary ---------------------------------------------------------------------------------------
def test_reduced_vocabulary_logits_are_the_target_head_rows():
    target = tiny_target()
    draft = bound_draft(target, draft_vocab_size=20)
    ids = torch.tensor([3, 7, 100, 0, 55, 9, 127, 64, 12, 31, 90, 1, 2, 4, 5, 6, 8, 10, 11, 13])
    draft.set_draft_vocabulary(ids)
    assert torch.equal(draft.d2t, ids.sort().values)
    h = torch.randn(4, 64)
    with torch.no_grad():
        full = target.get_output_embeddings()(h)
        compact = draft.compact_logits(h)
        spread = draft.logits(h)
    assert compact.shape == (4, 20)
    # a few rows on a CPU: W @ X^T (jakiro.common.cpu_linear)
    assert torch.allclose(compact, full[:, draft.d2t], atol=1e-5)
    assert torch.equal(spread[:, draft.d2t], compact)
    outside = torch.ones(128, dtype=torch.bool)
    outside[draft.d2t] = False
    assert torch.isinf(spread[:, outside]).all() and (spread[:, outside] < 0).all()
    assert torch.equal(draft.to_target_ids(compact.argmax(-1)), spread.argmax(-1))


def test_reduced_vocabulary_follows_a_vocabulary_change_and_round_trips_in_bf16(tmp_path):
    target = tiny_target()
    draft = bound_draft(target, draft_vocab_size=8)
    h = torch.randn(2, 64)
    with torch.no_grad():
        before = draft.compact_logits(h)
        draft.set_draft_vocabulary(torch.arange(100, 108))  # the cached head rows must be re-gathered
        after = draft.compact_logits(h)
        assert torch.allclose(after, target.get_output_embeddings()(h)[:, 100:108])
        assert not torch.allclose(before, after)
    draft.save_pretrained(tmp_path, dtype=torch.bfloat16)
    loaded = DraftHead.from_pretrained(tmp_path)
    assert loaded.d2t.dtype == torch.long and torch.equal(loaded.d2t, torch.arange(100, 108))


@pytest.mark.parametrize("ids, match", [
    (torch.arange(7), "expected 8 distinct"),
    (torch.tensor([1, 1, 2, 3, 4, 5, 6, 7]), "distinct"),
    (torch.arange(125, 133), r"in \[0, 128\)"),
])
def test_bad_draft_vocabulary_is_rejected(ids, match):
    draft = tiny_draft(tiny_target(), draft_vocab_size=8)
    with pytest.raises(ValueError, match=match):
        draft.set_draft_vocabulary(ids)


def test_draft_vocab_size_must_fit_the_vocabulary():
    with pytest.raises(ValueError, match="draft_vocab_size"):
        DraftHeadConfig.for_target(tiny_target().config, draft_vocab_size=129)
    with pytest.raises(ValueError, match="full target vocabulary"):
        tiny_draft(tiny_target()).set_draft_vocabulary(torch.arange(8))


def test_shipped_draft_names(tmp_path, monkeypatch):
    import jakiro.drafts as shipped

    monkeypatch.setattr(shipped, "FOLDER", tmp_path)
    bound_draft(tiny_target()).save_pretrained(tmp_path / "tiny-jakiro")
    assert shipped.shipped_drafts() == ["tiny-jakiro"]
    assert DraftHead.from_pretrained("shipped:tiny-jakiro").config.vocab_size == 128
    with pytest.raises(ValueError, match="no shipped draft named 'nope'; shipped: tiny-jakiro"):
        DraftHead.from_pretrained("shipped:nope")


@pytest.mark.parametrize("num_experts, k, parallel_head", [(1, 1, False), (2, 2, True), (4, 1, False)])
def test_bf16_draft_forward(num_experts, k, parallel_head):
    """The routing weights are float32 whatever the model dtype (a one-expert bf16 draft used to fail here)."""
    target = tiny_target().to(torch.bfloat16)
    draft = bound_draft(target, num_experts=num_experts, experts_per_token=k, parallel_head=parallel_head)
    draft.to(torch.bfloat16)
    features, ids, positions = draft_inputs()
    with torch.no_grad():
        out = draft(features.to(torch.bfloat16), ids, positions, with_head2=parallel_head, with_experts=True)
    assert out.head1.dtype == torch.bfloat16 and out.expert_weights.dtype == torch.float32
    assert torch.isfinite(draft.logits(out.head1).float()).all()


# -- expert width (draft.expert_intermediate_size) -------------------------------------------------------------------
@pytest.mark.parametrize("width", [None, 96, 128])
def test_expert_width_shapes_forward_backward_and_config_json(tmp_path, width):
    """Experts of any width: the reference's hidden-size experts (None), or as wide as the target's MLP (128 here,
    EAGLE-2's width); recorded in config.json, and the draft trains (every parameter gets a finite gradient)."""
    target = tiny_target("llama", 64)
    config = DraftHeadConfig.for_target(target.config, expert_intermediate_size=width)
    inner = width or target.config.hidden_size
    torch.manual_seed(0)
    draft = DraftHead(config)
    draft.bind_target_modules(target.get_input_embeddings(), target.get_output_embeddings())
    for expert in draft.layers[0].mlp_moe.experts:
        assert expert.gate_proj.weight.shape == expert.up_proj.weight.shape == (inner, 64)
        assert expert.down_proj.weight.shape == (64, inner)
    features, ids = torch.randn(2, 5, 64), torch.randint(0, 64, (2, 5))
    out = draft(features, ids, torch.arange(5).expand(2, 5), with_head2=True)
    assert out.head1.shape == out.head2.shape == (2, 5, 64)
    (out.head1.square().mean() + out.head2.square().mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in draft.parameters())
    draft.save_pretrained(tmp_path / "d")
    assert '"expert_intermediate_size": %d' % inner in (tmp_path / "d" / "config.json").read_text()
    assert DraftHead.from_pretrained(tmp_path / "d").layers[0].mlp_moe.experts[0].down_proj.weight.shape == (64, inner)


def test_expert_width_from_the_config_and_equal_parameter_count():
    """draft.expert_intermediate_size sizes the draft trained from a config; two experts of half EAGLE-2's width have
    EAGLE-2's MLP parameter count; a bad width is a ConfigError naming the key."""
    from jakiro.common.config import ConfigError, load_config
    from jakiro.train.main import draft_architecture

    target = tiny_target("llama", 64)
    config = draft_architecture(load_config(None, ["draft.expert_intermediate_size=64"]), target.config)
    eagle2 = draft_architecture(load_config("eagle2", ["draft.expert_intermediate_size=128"]), target.config)
    assert config.expert_intermediate_size == 64 and eagle2.expert_intermediate_size == 128

    def mlp_parameters(c):
        return sum(p.numel() for p in DraftHead(c).layers[0].mlp_moe.experts.parameters())

    assert mlp_parameters(config) == mlp_parameters(eagle2) == 3 * 64 * 128
    with pytest.raises(ConfigError, match=r"draft.expert_intermediate_size: expected null or an integer >= 1, got 0"):
        load_config(None, ["draft.expert_intermediate_size=0"])
