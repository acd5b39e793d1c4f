"""spine: grading lumbar spine degeneration from MRI (RSNA 2024 layout)."""

__version__ = "0.1.0"
