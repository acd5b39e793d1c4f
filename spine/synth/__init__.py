"""Synthetic lumbar spine MRI studies in the RSNA 2024 layout, with known truth and a Bayes-optimal oracle."""
