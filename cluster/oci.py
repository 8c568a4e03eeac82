"""One-layer container images from local files, as docker-archive tars, with no registry and no engine.

The test cluster's own images (the pod sandbox "pause", CoreDNS, the Kubeflow operators) are a
static Go binary each; this packs one into the archive format ``ctr images import`` (and
``docker load``) reads: ``manifest.json``, an image config naming the layer's diff ID, and the
layer, an uncompressed tar. Deterministic: the same files give the same image ID.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

EPOCH = 0  # file times in the layer, so that the image ID depends on the content alone


def _add(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int, kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.mode, info.type = EPOCH, 0, 0, mode, kind
    if data is None:
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def layer(files: dict[str, Path | bytes], dirs: dict[str, int] | None = None) -> bytes:
    """An uncompressed layer tar: ``files`` (path in the image -> local file or bytes; executables keep
    their mode) and ``dirs`` (path -> mode, e.g. a world-writable /tmp)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made = set()
        for path, mode in sorted((dirs or {}).items()):
            _add(tar, path.strip("/"), None, mode, tarfile.DIRTYPE)
            made.add(path.strip("/"))
        for path, source in sorted(files.items()):
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in made:
                    _add(tar, parent, None, 0o755, tarfile.DIRTYPE)
                    made.add(parent)
            data = source if isinstance(source, bytes) else source.read_bytes()
            mode = 0o755 if isinstance(source, Path) and source.stat().st_mode & 0o111 else 0o644
            _add(tar, path.strip("/"), data, mode)
    return buf.getvalue()


def archive(ref: str, files: dict[str, Path | bytes], out: Path, *, entrypoint: list[str],
            user: str = "65532:65532", dirs: dict[str, int] | None = None, env: list[str] | None = None) -> str:
    """Write a docker-archive tar of a one-layer image named ``ref`` to ``out``; returns the image ID."""
    data = layer(files, dirs)
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": entrypoint, "User": user, "Env": env or ["PATH=/usr/local/bin:/usr/bin:/bin"],
                   "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "kuberlhf cluster/oci.py"}],
    }, sort_keys=True).encode()
    image_id = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{image_id}.json", "RepoTags": [ref], "Layers": [f"{diff_id[7:]}/layer.tar"]}])
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as tar:
        _add(tar, f"{image_id}.json", config, 0o644)
        _add(tar, f"{diff_id[7:]}/layer.tar", data, 0o644)
        _add(tar, "manifest.json", manifest.encode(), 0o644)
    return f"sha256:{image_id}"
