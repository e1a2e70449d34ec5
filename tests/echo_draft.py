"""A test-only draft whose proposals the target accepts whenever it repeats a token: the "echo" draft.

Its weights make every draft feature equal the target feature it is fed: ``fc`` passes f_t through (zero on the
token embedding), and the attention output and every expert's down projection are zero, so both heads return
f_t. Through the target's LM head that is the target's own prediction at t, i.e. the token just committed; the
draft therefore proposes "the same token again" (and the target's runners-up) at every tree node. On a stretch
where the target's greedy output repeats one token (``zzzz...``), each step accepts a whole chain: deterministic
acceptance, unlike a randomly initialised draft, without any training.
"""

from __future__ import annotations

from pathlib import Path

import torch

from jakiro.model.init_draft import init_draft


def write_echo_draft(base_model_path: str | Path, out: str | Path) -> Path:
    """Write the echo draft for the target at ``base_model_path`` into ``out``; returns ``out``."""
    draft = init_draft(str(base_model_path), str(out))
    hidden = draft.config.hidden_size
    with torch.no_grad():
        draft.fc.weight.zero_()
        draft.fc.weight[:, hidden:] = torch.eye(hidden)  # input is [embedding; feature]
        if draft.fc.bias is not None:
            draft.fc.bias.zero_()
        layer = draft.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        for expert in layer.mlp_moe.experts:
            expert.down_proj.weight.zero_()
    draft.save_pretrained(out)
    return Path(out)
