"""Benchmark evaluation: answer generation for every decoding method, the speed report, batch-run helpers.

* ``gen_ea_answer`` / ``gen_baseline_answer``: entry points of :mod:`jakiro.evaluation.answers`; the reference's
  per-family names (``gen_ea_answer_vicuna`` ...) are thin aliases (:mod:`jakiro.evaluation.family_alias`);
* ``speed``: speedup, tau, per-depth acceptance and greedy equality from answer files (the reference's too);
* ``plot``: PNG of speedup and tau per bench and method (needs matplotlib).
"""
