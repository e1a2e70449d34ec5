"""The registry of Jakiro*'s static draft trees as choices lists (rank paths, see :mod:`jakiro_star.trees`).

Plain data without torch, so that :mod:`jakiro.common.config` can validate ``tree.static_tree`` without importing it.

Registered trees (nodes per depth below the root, root excluded):

* ``mc_sim_7b_63``: the reference Jakiro*'s tree, named after EAGLE-1's ``mc_sim_7b_63`` but the depth-6 variant
  with 4, 8, 8, 3, 2, 1 = 26 nodes (27 tokens verified per step). The reference's exact choices are not in our
  spec; this list has the same shape, with wider branching under the first-drawn (most probable) children.
* ``cpu8`` (3, 3, 1, 1), ``cpu12`` (3, 5, 2, 1, 1), ``cpu16`` (4, 6, 4, 1, 1): small trees for a CPU target, where
  every verified token costs about as much as a full decoding step.
"""

STATIC_TREES: dict[str, tuple[tuple[int, ...], ...]] = {
    "mc_sim_7b_63": (
        (0,), (1,), (2,), (3,),
        (0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (2, 0), (3, 0),
        (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 2, 0), (1, 0, 0), (2, 0, 0),
        (0, 0, 0, 0), (0, 0, 0, 1), (0, 1, 0, 0),
        (0, 0, 0, 0, 0), (0, 0, 0, 1, 0),
        (0, 0, 0, 0, 0, 0),
    ),
    "cpu8": (
        (0,), (1,), (2,),
        (0, 0), (0, 1), (1, 0),
        (0, 0, 0),
        (0, 0, 0, 0),
    ),
    "cpu12": (
        (0,), (1,), (2,),
        (0, 0), (0, 1), (0, 2), (1, 0), (2, 0),
        (0, 0, 0), (0, 0, 1),
        (0, 0, 0, 0),
        (0, 0, 0, 0, 0),
    ),
    "cpu16": (
        (0,), (1,), (2,), (3,),
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0),
        (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0),
        (0, 0, 0, 0),
        (0, 0, 0, 0, 0),
    ),
}
