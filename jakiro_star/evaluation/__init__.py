"""The reference's Jakiro* evaluation scripts, as thin aliases (:mod:`jakiro.evaluation.family_alias`).

``python -m jakiro_star.evaluation.gen_ea_answer_vicuna`` answers with method jakiro_star and the vicuna template,
``gen_baseline_answer_<family>`` with plain decoding.
"""
