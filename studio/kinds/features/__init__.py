"""Cached features (studio/kinds/features/cache.py) and the precompute command's options (config.py)."""
