"""File formats: atomic writes, label PNGs, CAM store, checkpoints."""
