"""The README demo: its identical-text settings per CPU kind, its summary line, and its note when outputs differ."""

from jakiro.common.config import load_config
from jakiro.demo import different_output_note


def test_note_explains_bf16_rounding_and_points_to_exact_verification():
    note = different_output_note(load_config("smollm2", ["model.dtype=bfloat16"]))
    assert "bfloat16" in note and "generation.exact_verification=true" in note


def test_note_points_to_the_greedy_check_where_rounding_is_not_the_explanation():
    for overrides in (["generation.exact_verification=true"], ["model.dtype=float32"]):
        note = different_output_note(load_config("smollm2", overrides))
        assert "python -m jakiro.evaluation.greedy_check" in note and "exact_verification" not in note


def test_identical_text_settings_per_cpu_kind(monkeypatch):
    from jakiro.common import hardware

    expected = {"AMX-BF16": ("bfloat16", True), "AVX512-BF16": ("float32", False), "AVX2": ("float32", False),
                None: ("float32", False)}
    for extension, settings in expected.items():
        monkeypatch.setattr(hardware, "matrix_extension", lambda extension=extension: extension)
        dtype, exact, why = hardware.identical_text_settings("cpu")
        assert (dtype, exact) == settings
        assert ("exact" if exact else "batched") in why


def test_demo_uses_identical_settings_unless_the_user_sets_them(monkeypatch):
    from jakiro import demo

    monkeypatch.setattr(demo, "identical_text_settings", lambda device: ("float32", True, "test CPU: exact fp32"))
    cfg, mode = demo.identical_config(load_config("smollm2", ["model.dtype=bfloat16"]), [])
    assert (cfg.model.dtype, cfg.generation.exact_verification) == ("float32", True)
    assert mode == "identical-text settings for test CPU: exact fp32"
    overrides = ["model.dtype=bfloat16", "generation.exact_verification=false"]
    cfg, mode = demo.identical_config(load_config("smollm2", overrides), overrides)
    assert (cfg.model.dtype, cfg.generation.exact_verification) == ("bfloat16", False)
    assert mode.endswith("with your --set")


def test_demo_prints_identical_texts_and_its_settings(tiny_dirs, monkeypatch, capsys):
    """The demo end to end on a tiny target: every text equal to plain decoding's, the mode in the summary line."""
    from jakiro import demo
    from test_evaluation import QUESTIONS

    target, draft = tiny_dirs
    monkeypatch.setattr(demo, "identical_text_settings", lambda device: ("float32", True, "test CPU: exact fp32"))
    code = demo.main(["--questions", "2", "--set", f"model.base_model_path={target}", "--set",
                      f"model.draft_path={draft}", "--set", f"eval.question_file={QUESTIONS}", "--set",
                      "generation.max_new_tokens=12"])
    out = capsys.readouterr().out
    assert code == 0
    mean = next(line for line in out.splitlines() if line.strip().startswith("mean"))
    assert mean.split()[-1] == "2/2"
    assert "float32" in out and "exact verification (identical-text settings for test CPU: exact fp32)" in out
