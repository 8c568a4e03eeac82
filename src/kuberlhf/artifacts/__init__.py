"""Artifacts: where one lives (:mod:`.location`), object storage and manifests (:mod:`.storage`, :mod:`.objects`,
:mod:`.s3`, :mod:`.transfer`, :mod:`.manifest`), a stage's run directory and resume (:mod:`.rundir`), one writer
per output (:mod:`.lease`), checkpoint sealing (:mod:`.checkpoints`), model cards and publishing (:mod:`.cards`),
the local cache (:mod:`.cache`). Imports nothing above it."""
