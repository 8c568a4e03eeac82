"""Evaluation: judges as plug-ins (:mod:`.judges`) and held-out scores and KL to the reference (:mod:`.heldout`)."""
