"""PL-Mix: pseudo labels and the CAM network refine each other through rounds of mix-up.

What the source intends (PL-Mix README and its code, see METHODS.md): pair each training image
with a partner in its batch, derive the source's pseudo label from its flip-averaged CAM with a
dense CRF at background threshold ``camT``, paste the source object (rotated and rescaled 0.5 to
2x, from a later point on) onto the partner, label the result with the source label over the
object and the partner's pseudo label elsewhere, and train on it with the classification loss
plus focal, soft IoU, soft Dice and spatial-continuity terms on the mixed image's CAM; ``camT``
follows the best threshold of the latest train-split evaluation.

Here that runs as a refinement of the cached CAM network, in rounds (``rounds.py``): a round's
pseudo labels come from the network as it was when the round began, instead of from the network
of the current step; the source re-derives them every step of an epoch.

Reconstructed: the source does not give the following; the choices are exposed as options.

- Round count, steps per round, the round from which the paste is rotated and rescaled, and the
  loss weights (defaults in the config schema).
- CAMs of the passes: infer_cam's scales and flip rather than one flipped scale, so that
  ``camT``, which comes from a sweep of exactly such CAMs (eval_cam's at the start), fits the
  CAMs it thresholds. They are stored at 8 bits in the round's CAM file, as infer_cam stores
  them, and the sweep and the next round's labels read that file, as eval_cam and pseudo_labels
  read infer_cam's.
- Pseudo labels: argmax of a dense CRF over background (score ``camT``) and the image's classes,
  as stages.labels.pseudo makes them with no ignore band.
- Paste mask: hard, the source pixels whose pseudo label is a foreground class; the source's
  background and ignore pixels are never pasted (``paste.py``). The paste transform rotates
  uniformly in [-max, max] degrees and rescales log-uniformly in the scale range, about the
  crop centre.
- Pairing: each crop onto the next crop of its (shuffled) batch.
- Class set of a mixed image: the classes visible in the mixed label, plus partner classes its
  pseudo label never located in the crop (``paste.mixed_classes``).
- Soft class probabilities for the losses: CAMs divided by their spatial maximum, background
  score ``camT``, softmax with a temperature over background and the image's classes
  (``losses.py``). Focal loss with gamma; soft IoU and Dice averaged over the (image, class)
  pairs present in the target; spatial continuity as the L1 difference of neighbouring
  probability vectors on the network's output grid.
- Optimisation: each round is a short fine-tune with a fresh optimiser whose learning rate
  decays (poly) to zero within the round; the mixed images replace the plain ones.
"""
