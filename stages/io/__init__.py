"""File formats: atomic writes, label PNGs, CAM store, checkpoints, tensor files read without trusting them."""
