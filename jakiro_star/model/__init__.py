"""``StarEaModel``: :class:`jakiro.model.ea_model.EaModel` with Jakiro*'s static-tree drafter and verifier.

Same API as ``EaModel`` (``from_pretrained``, ``eagenerate``, ``naivegenerate``, ``ea_generate``,
``naive_generate``, ``last_stats``, ``get_tokenizer``); only the tree settings differ::

    from jakiro_star.model import StarEaModel
    model = StarEaModel.from_pretrained(base_model_path=..., ea_model_path=..., static_tree="mc_sim_7b_63",
                                        sibling_mode="mixture", dtype=torch.bfloat16)
    ids = model.eagenerate(input_ids, temperature=1.0, max_new_tokens=256)

``StarEaModel`` is an ``EaModel`` whose drafter is :class:`jakiro_star.drafter.StaticTreeDrafter`: per step it draws
the static tree's nodes from the experts' distributions and records their proposals (with ``lookup_tokens``, a
prompt-lookup branch joins them as fixed candidates); the generate loop, the target adapter and the verifier
(:func:`jakiro.decoding.verify.verify`: greedy at temperature 0, lossless recursive rejection sampling otherwise)
are the ``jakiro`` ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from jakiro.common.io import check_model_files
from jakiro.model.draft import DraftHead
from jakiro.model.ea_model import EaModel, check_draft_fits
from jakiro_star.drafter import StaticTreeDrafter
from jakiro_star.proposals import check_mode
from jakiro_star.trees import StaticTree, get_static_tree

DEFAULT_TREE = "mc_sim_7b_63"
_DYNAMIC_TREE_ARGS = ("total_token", "depth", "top_k")


class StarEaModel(EaModel):
    """Target model + draft head + tokenizer, decoding with Jakiro*'s static sampled trees."""

    def __init__(
        self,
        base_model: PreTrainedModel,
        draft: DraftHead,
        tokenizer=None,
        static_tree: str | Sequence[Sequence[int]] | StaticTree = DEFAULT_TREE,
        sibling_mode: str = "mixture",
        stop_token_ids: list[int] | None = None,
        exact_verification: bool = False,
        lookup_tokens: int = 0,
        lookup_ngram: int = 3,
    ):
        check_draft_fits(draft, base_model)
        # EaModel moves and casts the draft head in place, so the drafter built around it here is the one used
        drafter = StaticTreeDrafter(draft, static_tree, sibling_mode)
        super().__init__(base_model, draft, tokenizer, sibling_mode=sibling_mode, stop_token_ids=stop_token_ids,
                         exact_verification=exact_verification, lookup_tokens=lookup_tokens,
                         lookup_ngram=lookup_ngram, drafter=drafter)

    @classmethod
    def from_pretrained(
        cls,
        base_model_path: str,
        ea_model_path: str,
        static_tree: str | Sequence[Sequence[int]] = DEFAULT_TREE,
        sibling_mode: str = "mixture",
        exact_verification: bool = False,
        lookup_tokens: int = 0,
        lookup_ngram: int = 3,
        **hf_kwargs,
    ) -> "StarEaModel":
        """Load a target with ``AutoModelForCausalLM.from_pretrained(base_model_path, **hf_kwargs)`` and a draft
        directory. ``static_tree``: a registered name (:data:`jakiro_star.tree_choices.STATIC_TREES`) or a choices list;
        ``sibling_mode``: ``mixture`` or ``per_expert`` (see :mod:`jakiro_star.proposals`); ``exact_verification``,
        ``lookup_tokens``, ``lookup_ngram``: as for :meth:`EaModel.from_pretrained` (the looked-up branch's nodes
        are verified as fixed candidates, see :func:`jakiro.decoding.tree.graft_chain`)."""
        given = [name for name in _DYNAMIC_TREE_ARGS if name in hf_kwargs]
        if given:
            raise ValueError(f"Jakiro* drafts a static tree: pass static_tree=... instead of {', '.join(given)}")
        if "torch_dtype" in hf_kwargs:  # the name reference users write; transformers 5 calls it dtype
            hf_kwargs["dtype"] = hf_kwargs.pop("torch_dtype")
        check_mode(sibling_mode)  # fail on bad tree settings before loading any weights
        tree = get_static_tree(static_tree)
        draft = DraftHead.from_pretrained(ea_model_path)
        check_model_files(base_model_path)
        base_model = AutoModelForCausalLM.from_pretrained(base_model_path, **hf_kwargs).eval()
        tokenizer = AutoTokenizer.from_pretrained(base_model_path)
        return cls(base_model, draft, tokenizer, tree, sibling_mode, exact_verification=exact_verification,
                   lookup_tokens=lookup_tokens, lookup_ngram=lookup_ngram)

    def set_tree(self, total_token: int, depth: int = 0, top_k: int = 0) -> None:
        """Not available: Jakiro* drafts a static tree. Use another one with
        ``model.drafter = StaticTreeDrafter(model.ea_layer, tree, sibling_mode)``."""
        raise ValueError("Jakiro* drafts a static tree, not a dynamic one (total_token, depth, top_k): set "
                         "model.drafter = jakiro_star.drafter.StaticTreeDrafter(model.ea_layer, static_tree, "
                         "sibling_mode) or construct StarEaModel with static_tree=...")
