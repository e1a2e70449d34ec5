"""``OracleEaModel``: :class:`EaModel` drafting with :class:`jakiro.decoding.oracle.OracleDrafter`, to measure how
much a perfect deterministic draft could gain on a target (see :mod:`jakiro.decoding.oracle`)."""

from __future__ import annotations

from jakiro.decoding.oracle import OracleDrafter
from jakiro.model.ea_model import EaModel
from jakiro.target import choose_tree_size


class OracleEaModel(EaModel):
    """:class:`EaModel` whose drafter is :class:`OracleDrafter`; ``depth``, ``top_k`` and the draft head are not
    used (construct it like an EaModel, e.g. ``OracleEaModel.from_pretrained(base, any_draft, total_token=8)``, or
    ``OracleEaModel(base_model, None, tokenizer, total_token=8)``).

    Its output is as lossless as any speculative run (the oracle tree is just another deterministic candidate
    set); its tau is the most a deterministic ``total_token``-node tree can reach on this target with this sampling
    setting.
    """

    def set_tree(self, total_token: int, depth: int = 0, top_k: int = 0) -> None:
        """Only ``total_token`` shapes the oracle tree (-1 = measure the target and pick, as for EaModel)."""
        if total_token == -1:
            total_token = choose_tree_size(self.target)
        self.drafter = OracleDrafter(self.target, total_token)
