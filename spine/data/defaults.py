"""Defaults of the stack selection and the sampler that the layers above take from here (a light module: composing
a config imports it). spine/preprocess/volume.py and spine/data/volume.py explain them."""

DEFAULT_MIN_SLICES = 2  # stacks with fewer slices are left out
DEFAULT_MAX_GAP_FACTOR = 2.5  # bridge one missing slice (gap 2x the step), not separate blocks
