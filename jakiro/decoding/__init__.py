"""Speculative decoding: draft trees (:mod:`~jakiro.decoding.tree`), verification (:mod:`~jakiro.decoding.verify`),
the drafters (the EAGLE-2 dynamic tree with CEPD :mod:`~jakiro.decoding.drafter`, the oracle, prompt lookup)."""
