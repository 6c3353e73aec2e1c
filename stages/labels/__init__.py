"""Pseudo labels from CAMs: background threshold, ignore band, dense CRF."""
