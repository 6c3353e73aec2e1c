"""IRN-style affinity refinement: pixel affinities learnt from the CAMs' confident regions, and a
random walk that spreads the CAMs along them (AffinityNet, Ahn and Kwak 2018; IRN, Ahn, Cho and
Kwak 2019; the "Stage 2 (Refine CAM)" the PL-Mix README points to).

1. ``labels.py``: confident foreground / background / unknown from a source CAM file; pairs
   within a radius on the embedding grid labelled same (background or foreground) or different.
2. ``net.py`` + ``training.py``: a backbone (started from the CAM network's) and a decoder give
   per-pixel embeddings; ``a_ij = exp(-mean |f_i - f_j|)``; AffinityNet's balanced loss, trained
   with the shared loop (resumable, DDP).
3. ``walk.py`` + ``refined_cams.py``: transition matrix ``D^-1 A^beta`` (self-loops included),
   ``2^log_t`` steps on the CAMs and a background score, written as a CAM file.

The source CAM file is any refinement's (raw CAMs, PL-Mix's, another walk's), so ``plmix`` then
``irn`` is ``irn: {method: irn, source: plmix}``.

Followed: AffinityNet's pair neighbourhood (radius 5, one direction per unordered pair), affinity
(L1 distance averaged over channels), loss (1/4 background pairs, 1/4 foreground pairs, 1/2
negative pairs, each averaged apart), walk (self-loops of weight 1, beta 8, 2^8 steps, background
score ``(1 - max CAM)^16``, CAMs area-averaged onto the grid and the result upsampled bilinearly);
IRN's confident regions from two thresholds on the CAMs with a dense CRF, and its stride-4 grid
with nearest-neighbour labels.

Reconstructed: the papers and their code do not give the following for this setting.

- Thresholds: IRN's are absolute (0.30 / 0.05, with its CAM evaluation threshold 0.15); here
  they are by default multiples of the source file's own best threshold, 2.0 and 0.33, which
  give IRN's values at 0.15 and follow CAMs of other strength (PL-Mix's, another data set's).
- With the CRF on, a pixel whose high-threshold map says foreground but whose low-threshold map
  says background or another class is unknown here (IRN keeps the high-threshold class): the
  regions are made by ``stages.labels.pseudo`` with an ignore band (``labels.py``).
- The network: the project's backbones and decoders instead of ResNet-38 with three 1x1
  projections; ``embedding_dim`` 128 (AffinityNet: 448); the grid is the decoder's stride 4,
  average-pooled for stride 8. AffinityNet's learning-rate groups (x2 for biases, x10/x20 for new
  layers) become the shared two groups (backbone, head x ``head_lr_mult``).
- One radius for training and walking (IRN trains its boundaries with radius 10 and walks with 5).
- The walk runs once, single scale, no flip; it is applied by repeated sparse products instead of
  repeated squaring of a dense matrix (the same result, ``walk.py``).
- Output values: ``rw_c / (rw_c + rw_bg)`` per class, so the file keeps the project's format and a
  constant background threshold of 0.5 gives AffinityNet's argmax (``walk.py``).
- The backbone starts from the raw CAM network (``results/cam/model.pt``) whatever the source is.
"""
