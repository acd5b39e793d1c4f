"""Defaults of the sampler that the layers above take from here (a light module: composing a config imports it)."""

DEFAULT_MAX_GAP_FACTOR = 2.5  # bridge one missing slice (gap 2x the step), not separate blocks
