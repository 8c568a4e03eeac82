"""Artifacts: object storage and manifests (:mod:`.storage`, :mod:`.s3`, :mod:`.manifest`), a stage's run
directory and resume (:mod:`.rundir`), checkpoint sealing (:mod:`.checkpoints`), model cards and
publishing (:mod:`.cards`), the local cache (:mod:`.cache`). Imports nothing above it."""
