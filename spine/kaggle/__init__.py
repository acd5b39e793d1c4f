"""Kaggle packaging: ``python -m spine.kaggle build`` (two datasets + a notebook for an offline submission)
and ``python -m spine.kaggle selftest`` (that bundle run end to end in a fresh venv on a fake /kaggle tree).

docs/kaggle.md says what is built, why these wheels, how to upload and how the self-test works.
"""
