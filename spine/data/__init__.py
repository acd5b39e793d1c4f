"""Datasets and transforms of the training stages (see :mod:`.landmarks`, :mod:`.transforms`, :mod:`.grid`)."""
