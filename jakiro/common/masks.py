"""Boolean attention patterns as the additive float masks attention kernels take.

Every attention mask in Jakiro (target tree verification, the draft's context, tree and chain passes) is built
as a bool ``allowed`` pattern first and turned into an additive mask here: 0 where attention is allowed and the
dtype's most negative finite value where it is not. Additive masks are read the same way by eager and SDPA
attention (boolean masks are not), and a finite minimum keeps a fully masked row free of NaNs.
"""

from __future__ import annotations

import torch


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[..., q, k] bool (True = may attend) -> [..., q, k] ``dtype`` tensor of 0 / ``torch.finfo(dtype).min``."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed,
                                                                                       torch.finfo(dtype).min)
