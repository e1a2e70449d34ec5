"""Speculative decoding: draft trees (:mod:`~jakiro.decoding.tree`), the drafter interface
(:mod:`~jakiro.decoding.drafting`) and its drafters (the EAGLE-2 dynamic tree with CEPD :mod:`~jakiro.decoding.drafter`,
the oracle :mod:`~jakiro.decoding.oracle`, prompt lookup :mod:`~jakiro.decoding.lookup`), verification
(:mod:`~jakiro.decoding.verify`) and the generate loop (:mod:`~jakiro.decoding.loop`)."""
