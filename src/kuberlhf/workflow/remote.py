"""Talking to a Kubeflow Pipelines server with ``kfp.Client``: start a run, upload the pipelines.

$ kuberlhf pipeline submit --host http://ml-pipeline.kubeflow:8888 --param mode=pytorchjob
$ kuberlhf pipeline upload --host http://ml-pipeline.kubeflow:8888   # what the Helm chart's post-install Job runs

Uploading is idempotent: a pipeline that does not exist is created; one that does gets a
new version named after the kuberlhf version and a digest of the compiled YAML, unless a
version of that name is already there.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

from kuberlhf import __version__
from kuberlhf.errors import KuberlhfError

log = logging.getLogger(__name__)
LAUNCHER_SERVICE_ACCOUNT = "kuberlhf-launcher"


def client(host: str, namespace: str | None = None) -> Any:
    import kfp

    try:
        return kfp.Client(host=host, namespace=namespace) if namespace else kfp.Client(host=host)
    except Exception as err:  # the client checks the server on construction
        raise KuberlhfError(f"cannot reach Kubeflow Pipelines at {host}: {_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def submit(host: str, pipeline: str, params: dict[str, Any], *, experiment: str = "kuberlhf",
           run_name: str | None = None, namespace: str | None = None,
           service_account: str = LAUNCHER_SERVICE_ACCOUNT, pipeline_root: str | None = None,
           kfp_client: Any = None, settings: dict | None = None) -> dict:
    """Start a run of ``pipeline`` (shaped by its compile ``settings``) on the server; ``{"run_id", "url"}``."""
    from kuberlhf.workflow.compiling import compile_pipeline

    kfp_client = kfp_client or client(host, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(pipeline, Path(tmp) / f"{pipeline}.yaml", settings=settings)
        try:
            result = kfp_client.create_run_from_pipeline_package(
                str(package), arguments=params, run_name=run_name, experiment_name=experiment,
                namespace=namespace, pipeline_root=pipeline_root, service_account=service_account or None,
            )
        except Exception as err:
            raise KuberlhfError(f"submitting {pipeline} to {host}: {_first_line(err)}") from err
    run_id = result.run_id
    return {"run_id": run_id, "url": f"{host.rstrip('/')}/#/runs/details/{run_id}"}


def version_name(package: Path) -> str:
    """``<kuberlhf version>-<12 hex of the compiled YAML's sha256>``: the same YAML, the same name."""
    return f"{__version__}-{hashlib.sha256(package.read_bytes()).hexdigest()[:12]}"


def upload(host: str, pipelines: list[str], *, namespace: str | None = None, kfp_client: Any = None) -> list[dict]:
    """Upload each pipeline (or a new version of it); one ``{"pipeline", "action", "version"}`` per pipeline."""
    from kuberlhf.workflow.compiling import build, compile_pipeline

    kfp_client = kfp_client or client(host, namespace)
    done = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in pipelines:
            package = compile_pipeline(name, Path(tmp) / f"{name}.yaml")
            version = version_name(package)
            description = (build(name).description or "").strip()
            try:
                pipeline_id = kfp_client.get_pipeline_id(name)
                if pipeline_id is None:
                    kfp_client.upload_pipeline(str(package), pipeline_name=name, description=description,
                                               namespace=namespace)
                    action = "created"
                elif version in _version_names(kfp_client, pipeline_id):
                    action = "unchanged"
                else:
                    kfp_client.upload_pipeline_version(str(package), pipeline_version_name=version,
                                                       pipeline_id=pipeline_id, description=description)
                    action = "new version"
            except Exception as err:
                raise KuberlhfError(f"uploading {name} to {host}: {_first_line(err)}") from err
            log.info("pipeline %s: %s (%s)", name, action, version)
            done.append({"pipeline": name, "action": action, "version": version})
    return done


def _version_names(kfp_client: Any, pipeline_id: str) -> set[str]:
    names, token = set(), ""
    while True:
        page = kfp_client.list_pipeline_versions(pipeline_id=pipeline_id, page_token=token, page_size=100)
        names |= {v.display_name for v in (page.pipeline_versions or [])}
        token = page.next_page_token
        if not token:
            return names
