"""EIL, exploratory inference learning for scribble-supervised segmentation (Zhou et al., AAAI 2023).

The segmenter first trains on scribbles alone (partial cross-entropy, 255 ignored). Then, every
``explore_every`` steps for ``len(radii)`` rounds, the labels grow: an EMA teacher gives each
image's state, a policy searcher picks probability thresholds, label inference fills unlabelled
pixels near the labelled ones whose prediction clears its class's threshold, and a policy
assessor (Q) decides where the new map is adopted; searcher and assessor learn as DDPG from the
change in a contrastive critic of the feature clustering. The segmenter then trains on the grown
maps. No public code exists and the paper's Eq. 1-3 are missing: what is reconstructed is said in
each module (``inference``, ``critic``, ``agent``, ``explore``) and in docs/methods/eil.md.

Modules: ``critic`` (V and the reward), ``inference`` (H and the action spaces), ``agent``
(searcher, assessor, DDPG), ``explore`` (one round), ``report`` (precision/coverage per round and
label maps for the user), ``method`` (the options and the training hooks).
"""
from stages.methods.eil.method import EIL

__all__ = ["EIL"]
