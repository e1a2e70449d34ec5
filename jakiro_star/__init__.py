"""Jakiro*: static draft trees whose siblings are drawn from the draft's different experts, verified losslessly.

What Jakiro* is: the reference's EAGLE-1-style variant of Jakiro. Instead of a dynamic top-k tree, every round
drafts a fixed *static tree* (a choices list such as ``mc_sim_7b_63``), and each node's children are drawn from
the experts' own distributions ("decoupled" candidates), either from their gate-weighted mixture
q = sum_e pi_e p_e or expert by expert (child j from expert j mod E).

What it reuses from ``jakiro``: the draft head (the same ``DraftHead``, trained by the same trainer; typically
2 experts, top-2, no parallel head), the target adapter and KV compaction, the generate loop, the verifier (greedy,
and recursive rejection sampling with the recorded proposals of the drawn children, :mod:`jakiro.decoding.verify`,
where the reference used a wrong q and a near-uniform residual), the config system and the evaluation entry points
(``eval.method: jakiro_star``). What it adds:

* :mod:`jakiro_star.tree_choices` / :mod:`jakiro_star.trees` — the static tree registry, validation, conversion;
* :mod:`jakiro_star.proposals` — per-expert distributions, mixture / per-expert slots, exact draws;
* :mod:`jakiro_star.drafter` — ``StaticTreeDrafter``, one draft forward per depth over the static tree, a
  :class:`jakiro.decoding.drafting.Drafter`;
* :mod:`jakiro_star.model` — ``StarEaModel``, an ``EaModel`` with that drafter.

Greedy decoding (temperature 0) drafts deterministic top candidates per expert and equals the target's greedy
output; the reference crashed there.
"""
