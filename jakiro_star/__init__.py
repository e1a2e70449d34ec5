"""Jakiro*: static draft trees whose siblings are drawn from different experts, verified losslessly.

Built on the ``jakiro`` draft head, target adapter and verification; the static-tree drafter and the
multi-candidate sampling verifier with true proposal probabilities are tracked in the project's Jakiro* issue.
"""
