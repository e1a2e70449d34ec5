"""The reference's import path for Jakiro*'s model: ``from jakiro_star.model.ea_model import EaModel``.

``EaModel`` here is :class:`jakiro_star.model.StarEaModel` (static sampled trees, lossless recursive rejection
sampling); the speculative-decoding API is the one of :class:`jakiro.model.ea_model.EaModel`.
"""

from jakiro_star.model import StarEaModel as EaModel

__all__ = ["EaModel"]
