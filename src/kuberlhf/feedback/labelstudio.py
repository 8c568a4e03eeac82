"""A Label Studio project for ranking candidates, over its REST API.

The official SDK (``label-studio-sdk``) is not used: it pulls opencv, whose numpy bound the training
stack does not meet, and the handful of documented endpoints used here (projects, import, tasks,
export, users) are plain JSON over HTTP. Credentials come from the environment only:
``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` (a personal access token, i.e. a JWT refresh
token, or a legacy API token); they are never written to a file or a log.

Each task's data carries its candidates dataset row id as ``kuberlhf_id``: a re-export adds only the
tasks the project lacks, and an import refuses annotations of tasks it did not export.
"""

from __future__ import annotations

import html
import logging
import os
from dataclasses import dataclass
from typing import Any

from kuberlhf.errors import ConfigError, KuberlhfError

log = logging.getLogger(__name__)

URL_ENV, KEY_ENV = "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"
TASK_ID = "kuberlhf_id"
PAGE = 100


class LabelStudioError(KuberlhfError):
    """Label Studio unreachable, refusing the credentials, or answering an unexpected way."""


def label_config(k: int, unusable_bucket: bool = False) -> str:
    """The ranking interface: the prompt, the K candidates as a ``<List>`` and a ``<Ranker>`` over them
    (with buckets ``rank`` and ``unusable`` when candidates may be set apart as unusable)."""
    buckets = ('<Bucket name="ranked" title="Best to worst"/><Bucket name="unusable" title="Unusable"/>'
               if unusable_bucket else "")
    return ('<View><Header value="Prompt"/><Text name="prompt" value="$prompt"/>'
            f'<Header value="Rank the {k} responses, best first"/>'
            '<List name="candidates" value="$items" title="Responses"/>'
            f'<Ranker name="rank" toName="candidates">{buckets}</Ranker></View>')


def task_of(row: dict) -> dict:
    """A Label Studio task of one candidates row: items ``c0..c{K-1}`` in the row's order."""
    items = [{"id": f"c{i}", "title": f"Response {i + 1}", "body": html.escape(text)}
             for i, text in enumerate(row["candidates"])]
    return {"data": {TASK_ID: row["id"], "prompt": row["prompt"], "items": items}}


@dataclass
class Client:
    """Label Studio at ``url`` with an API key (see the module docstring)."""

    url: str
    api_key: str
    timeout: float = 30.0

    @classmethod
    def from_env(cls) -> Client:
        url, key = os.environ.get(URL_ENV, "").rstrip("/"), os.environ.get(KEY_ENV, "")
        if not url:
            raise ConfigError(f"{URL_ENV} is not set: the Label Studio server, e.g. http://127.0.0.1:8080")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{URL_ENV}: expected an http(s):// URL, got {url!r}")
        if not key:
            raise ConfigError(f"{KEY_ENV} is not set: a Label Studio access token (Account & Settings)")
        return cls(url, key)

    def __post_init__(self) -> None:
        import requests

        self.session = requests.Session()
        self._authorized = False

    def _authorize(self) -> None:
        if self._authorized:
            return
        if self.api_key.count(".") == 2:  # a personal access token: a JWT refresh token, traded for access
            out = self._call("POST", "/api/token/refresh", json={"refresh": self.api_key}, auth=False)
            self.session.headers["Authorization"] = f"Bearer {out['access']}"
        else:
            self.session.headers["Authorization"] = f"Token {self.api_key}"
        self._authorized = True

    @property
    def where(self) -> str:
        """The server's address for messages, without any ``user:password@`` in it."""
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"

    def _call(self, method: str, path: str, *, auth: bool = True, retried: bool = False, **kwargs: Any) -> Any:
        import requests

        if auth:
            self._authorize()
        try:
            resp = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as err:
            raise LabelStudioError(f"Label Studio at {self.where} is unreachable ({type(err).__name__}); "
                                   f"check {URL_ENV}") from None
        if resp.status_code == 401 and auth and not retried and self.api_key.count(".") == 2:
            self._authorized = False  # the access token a personal token was traded for lasts minutes
            return self._call(method, path, auth=auth, retried=True, **kwargs)
        if resp.status_code in (401, 403):
            raise LabelStudioError(f"Label Studio at {self.where} refused the credentials (HTTP {resp.status_code} "
                                   f"on {path}); check {KEY_ENV}")
        if not resp.ok:
            raise LabelStudioError(f"Label Studio: {method} {path} answered HTTP {resp.status_code}: "
                                   f"{' '.join(resp.text[:200].split())}")
        return resp.json() if resp.content else None

    # ---------------------------------------------------------------- projects

    def find_project(self, title: str) -> dict | None:
        page, found = 1, []
        while True:
            out = self._call("GET", "/api/projects", params={"page": page, "page_size": PAGE})
            results = out["results"] if isinstance(out, dict) else out
            found += [p for p in results if p.get("title") == title]
            if not isinstance(out, dict) or not out.get("next"):
                break
            page += 1
        if len(found) > 1:
            raise LabelStudioError(f"Label Studio has {len(found)} projects titled {title!r}; rename all but one")
        return found[0] if found else None

    def ensure_project(self, title: str, k: int, instructions: str, unusable_bucket: bool) -> tuple[dict, bool]:
        """The project titled ``title`` (created with the ranking interface if absent); (project, created)."""
        project = self.find_project(title)
        if project is not None:
            if f'Header value="Rank the {k} responses' not in project.get("label_config", ""):
                raise LabelStudioError(f"project {title!r} exists with another interface (not a ranking of {k} "
                                       "candidates); choose another --project")
            return project, False
        body = {"title": title, "label_config": label_config(k, unusable_bucket), "expert_instruction": instructions,
                "show_instruction": True, "show_skip_button": True, "maximum_annotations": 1}
        return self._call("POST", "/api/projects", json=body), True

    def set_overlap(self, project: int, labelers_per_task: int) -> None:
        self._call("PATCH", f"/api/projects/{project}", json={"maximum_annotations": labelers_per_task})

    # ---------------------------------------------------------------- tasks

    def tasks(self, project: int) -> list[dict]:
        """Every task of ``project`` (id, data, annotation counts)."""
        page, out = 1, []
        while True:
            got = self._call("GET", "/api/tasks", params={"project": project, "page": page, "page_size": PAGE})
            batch = got["tasks"] if isinstance(got, dict) else got
            out += batch
            total = got.get("total", len(out)) if isinstance(got, dict) else len(out)
            if not batch or len(out) >= total:
                return out
            page += 1

    def import_tasks(self, project: int, tasks: list[dict]) -> int:
        for i in range(0, len(tasks), 500):
            self._call("POST", f"/api/projects/{project}/import", json=tasks[i : i + 500])
        return len(tasks)

    def export(self, project: int) -> list[dict]:
        """Every task (annotated or not) with its annotations (Label Studio's JSON export)."""
        return self._call("GET", f"/api/projects/{project}/export",
                          params={"exportType": "JSON", "download_all_tasks": "true"})

    def users(self) -> dict[int, str]:
        out = self._call("GET", "/api/users")
        users = out["results"] if isinstance(out, dict) else out
        return {u["id"]: u.get("email") or u.get("username") or str(u["id"]) for u in users}

    def annotate(self, task: int, result: list[dict], cancelled: bool = False) -> dict:
        """Submit an annotation as this client's user (a labeler's own key)."""
        return self._call("POST", f"/api/tasks/{task}/annotations", json={"result": result, "was_cancelled": cancelled})
