"""Segmenter training methods: the interface (base), one module per method, the registry."""
