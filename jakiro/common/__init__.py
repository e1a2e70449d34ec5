"""Shared foundations every layer may import: the config system, file integrity and atomic writes, hardware
detection, embedded assets, chat templates, attention-mask and CPU-kernel helpers. Nothing here imports another
``jakiro`` package (except :mod:`jakiro_star.tree_choices`, the registered static trees, for config validation)."""
