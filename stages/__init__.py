"""Label-efficient semantic segmentation pipeline: one module per stage, shared code in subpackages."""
