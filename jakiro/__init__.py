"""Jakiro: lossless tree speculative decoding with a mixture-of-experts draft head.

``from jakiro import EaModel`` is resolved lazily so that light modules (``jakiro.common.config``) import without torch.
"""

__all__ = ["EaModel"]


def __getattr__(name):
    if name == "EaModel":
        from jakiro.model.ea_model import EaModel

        return EaModel
    raise AttributeError(f"module 'jakiro' has no attribute {name!r}")
