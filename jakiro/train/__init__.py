"""Draft-head training: ``python -m jakiro.train.main`` (or ``accelerate launch -m jakiro.train.main``).

Modules: ``losses`` (pure loss functions), ``data`` (datasets, split, sampler, collate, noise), ``metrics``
(accuracies, the k-step draft accuracy, the JSONL log), ``trainer`` (the accelerate / DeepSpeed loop), ``main``
(the command line). The reference's ``main_deepspeed.py`` (with ``ds_config.json``) and its draft configs
(``vicuna_7B_config.json`` ..., for ``--configpath``) sit here too, so its commands work as typed.
"""
