"""The README demo's explanation when greedy outputs differ."""

from jakiro.config import load_config
from jakiro.demo import different_output_note


def test_note_explains_bf16_rounding_and_points_to_exact_verification():
    note = different_output_note(load_config("smollm2", ["model.dtype=bfloat16"]))
    assert "bfloat16" in note and "generation.exact_verification=true" in note


def test_note_points_to_the_greedy_check_where_rounding_is_not_the_explanation():
    for overrides in (["generation.exact_verification=true"], ["model.dtype=float32"]):
        note = different_output_note(load_config("smollm2", overrides))
        assert "python -m jakiro.evaluation.greedy_check" in note and "exact_verification" not in note
