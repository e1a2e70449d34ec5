"""Tests of the fast self-distillation decoder (jakiro.ge_data.decode) and its throughput command
(jakiro.ge_data.throughput): the same answers as transformers' generate, on tiny targets."""

import json
import re

import pytest
import torch
import yaml
from tiny_models import save_tiny_target_with_smollm2_tokenizer, tiny_target

from jakiro.common.config import load_config
from jakiro.ge_data.decode import decode_batch
from jakiro.ge_data.generate import GeDataError
from jakiro.ge_data.regenerate import regenerate
from jakiro.ge_data.throughput import main

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

EOS = set(range(0, 128, 11))


def generate_alone(model, prompt, max_new_tokens):
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=sorted(EOS), pad_token_id=1)[0, len(prompt):].tolist()
    end = next((i for i, t in enumerate(out) if t in EOS), None)
    return out if end is None else out[:end + 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_batch_answers_as_generate_alone(dtype):
    """Each row's answer is the target's greedy answer to its prompt alone: ends at its first end token (included)
    or after max_new_tokens, whatever the other rows do."""
    model = tiny_target("llama", vocab_size=128).to(dtype).eval()
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(2, 128, (n,), generator=generator).tolist() for n in (5, 17, 3, 30, 9, 12)]
    answers = decode_batch(model, prompts, 14, EOS, pad_id=1)
    assert answers == [generate_alone(model, p, 14) for p in prompts]
    lengths = {len(a) for a in answers}
    assert len(lengths) > 1 and max(lengths) == 14  # rows left the batch at different steps


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_cohorts_answer_as_generate_alone(family, dtype):
    """Many prompts through few rows and cohorts: prompts join cohorts of their own length, some are left behind
    while the rows are full and get a cohort of their own later, finished rows leave (compaction) and cohorts grow;
    every answer stays the prompt's answer alone."""
    model = tiny_target(family, vocab_size=128).to(dtype).eval()
    generator = torch.Generator().manual_seed(5)
    lengths = [3, 3, 4, 6, 6, 6, 7, 9, 12, 12, 15, 20, 21, 30]
    prompts = [torch.randint(2, 128, (n,), generator=generator).tolist() for n in lengths]
    reference = [generate_alone(model, p, 16) for p in prompts]
    for max_rows, max_cohorts, reach in ((4, 2, 3), (6, 1, 8), (64, 4, 8)):
        answers = decode_batch(model, prompts, 16, EOS, max_rows=max_rows, max_cohorts=max_cohorts, reach=reach)
        assert answers == reference, (max_rows, max_cohorts, reach)
    assert len({len(a) for a in reference}) > 1


def test_batch_invariant_kernels_answer_as_each_prompt_alone_through_them():
    """regenerate.kernels batch_invariant, float32: many prompts through few rows give every prompt the answer it
    gets decoded alone (one row) with the same linear kernels."""
    from jakiro.target.packed_linear import PackedLinears
    model = tiny_target("qwen2", vocab_size=128).eval()
    linears = PackedLinears(model, batch_invariant=True)
    generator = torch.Generator().manual_seed(8)
    prompts = [torch.randint(2, 128, (n,), generator=generator).tolist() for n in (4, 4, 9, 9, 9, 13, 20, 26)]
    alone = [decode_batch(model, [p], 16, EOS, max_rows=1, linears=linears)[0] for p in prompts]
    assert decode_batch(model, prompts, 16, EOS, max_rows=5, max_cohorts=2, reach=4, linears=linears) == alone
    assert len({len(a) for a in alone}) > 1


def test_cohort_scheduling_shares_attention_calls(monkeypatch):
    """Prompts of one length decode as one cohort: one attention call per layer and step, whatever the rows."""
    import jakiro.ge_data.decode as decode
    model = tiny_target("llama", vocab_size=128).eval()
    calls = []
    real = decode.sdpa_attention_forward
    monkeypatch.setattr(decode, "sdpa_attention_forward",
                        lambda m, q, *a, **k: calls.append(len(q)) or real(m, q, *a, **k))
    prompts = [[7 + i, 8, 9, 10, 11] for i in range(6)]
    decode_batch(model, prompts, 6, set(), max_rows=8)
    assert calls and set(calls) == {6}  # never one call per row
    assert len(calls) == 5 * model.config.num_hidden_layers  # 5 decoding steps after the prefills


def test_decode_batch_sampling_is_seeded():
    model = tiny_target("llama", vocab_size=128).eval()
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
    draw = [decode_batch(model, prompts, 8, EOS, 1, 1.0, torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert draw[0] == draw[1] != draw[2]
    assert all(0 <= t < 128 for answer in draw[0] for t in answer)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("throughput")
    model, tokenizer = save_tiny_target_with_smollm2_tokenizer(root / "target", eos_every=5)
    records = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"Question {i}: " + "why? " * i},
                                                   {"from": "gpt", "value": "because"},
                                                   {"from": "human", "value": "And then?"},
                                                   {"from": "gpt", "value": "done"}]} for i in range(7)]
    data = root / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = root / "regenerate.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"base_model_path": str(root / "target"), "dtype": "float32", "chat_template": "auto"},
        "data": {"input_path": str(data), "max_len": 200},
        "regenerate": {"max_new_tokens": 10, "batch_size": 3},
    }))
    return config


def test_static_and_generate_decoders_write_the_same_conversations(tiny_config, tmp_path):
    outputs = []
    for decoder in ("generate", "static"):
        out = tmp_path / f"{decoder}.jsonl"
        cfg = load_config(tiny_config, [f"regenerate.output_path={out}", f"regenerate.decoder={decoder}"])
        assert regenerate(cfg, progress=False) == out
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]
    assert sum(len(json.loads(line)["conversations"]) for line in outputs[0].splitlines()) > 14  # second turns too
    # the decoder is one of the settings recorded with the parts: a resumed run does not mix the two
    cfg = load_config(tiny_config, [f"regenerate.output_path={tmp_path / 'generate.jsonl'}"])
    with pytest.raises(GeDataError, match="regenerate.decoder: 'generate' recorded, 'static' now"):
        regenerate(cfg, progress=False)


def test_throughput_command_output(tiny_config, capsys):
    assert main(["--config", str(tiny_config), "--prompts", "5", "--max-new-tokens", "6", "--repeats", "2",
                 "--alone"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"ratio new/old: \d+\.\d\d", lines[-1])
    assert lines[-4] == "answers that differ between the two: 0 of 5"
    assert lines[-2] == "new answers that differ from each prompt answered alone: 0 of 5"
    for name in ("old (generate)", "new (static)"):
        line = next(x for x in lines if x.startswith(name))
        assert re.fullmatch(rf"{re.escape(name)}: \d+\.\d tokens/s, \d+\.\d% of the matmul throughput", line)
    assert sum(" tokens in " in x for x in lines) == 4  # 2 repeats of each path
    kernels = next(x for x in lines if x.startswith("new path's linear layers"))
    assert re.fullmatch(r"new path's linear layers \(batch_invariant kernels; rows per call\): "
                        r"\d+->\d+ (prepacked|F\.linear) x\d+( \(not F\.linear bits\))?(, .+)?", kernels)


def test_throughput_command_errors(tiny_config, capsys):
    assert main(["--config", str(tiny_config), "--prompts", "0"]) == 2
    assert "--prompts" in capsys.readouterr().err
