"""``spine-report``: one self-contained HTML page on a training run (:mod:`spine.report.gather` gathers the numbers
and figures, :mod:`spine.report.render` writes the page)."""
