"""Data sets: preparation (toy, voc, folder), the prepared index, checks and torch Datasets."""
