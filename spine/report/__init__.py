"""``spine-report``: one self-contained HTML page on a training run (:mod:`spine.report.gather` gathers the numbers
and figures, with :mod:`.sources`, :mod:`.scores`, :mod:`.landmark_errors` and :mod:`.studies`, into a
:class:`spine.report.contents.Report`; :mod:`spine.report.render` writes the page)."""
