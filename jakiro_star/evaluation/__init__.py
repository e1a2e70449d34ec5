"""The reference's Jakiro* evaluation scripts, as thin aliases: ``python -m jakiro_star.evaluation.gen_ea_answer_vicuna``
(method jakiro_star, vicuna template) and ``gen_baseline_answer_<family>`` (plain decoding); see
:mod:`jakiro.evaluation.family_alias`."""
