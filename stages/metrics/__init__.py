"""Segmentation metrics, all derived from one confusion matrix."""
