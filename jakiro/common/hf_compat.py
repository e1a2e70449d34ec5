"""Keyword names that moved between transformers 5.x releases, looked up on the installed version."""

from __future__ import annotations

import inspect


def cache_keyword(forward) -> str:
    """The keyword a transformers ``forward`` (a class's function, e.g. ``type(module).forward``) takes its KV cache
    by: ``cache`` since transformers 5.24, ``past_key_values`` before (deprecated there, removed in 5.40)."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
