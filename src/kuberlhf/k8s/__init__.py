"""Kubernetes: cluster settings (:mod:`.spec`), the PyTorchJob builder (:mod:`.pytorchjob`), the
idempotent launcher (:mod:`.launcher`) and ``kuberlhf launch`` (:mod:`.cli`).

Nothing here imports the ``kubernetes`` client at module level: only the launcher does, when it
builds real API clients.
"""
