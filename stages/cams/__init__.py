"""Class activation maps: multi-scale inference and background-threshold handling."""
