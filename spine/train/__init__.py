"""Training: ``spine-train`` (:mod:`.__main__`), the loop (:mod:`.engine`), stages (:mod:`.stage`,
:mod:`.landmarks`), checkpoints (:mod:`.checkpoint`), devices and distribution (:mod:`.runtime`)."""
