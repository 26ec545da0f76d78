"""A small synchronous client of the facejobs API (used by the CLI, notebooks and tests).

    with Client("http://127.0.0.1:8000", "fj_...") as fj:
        job = fj.submit("probe", {"matmul_size": 256})
        job = fj.wait(job["id"], timeout=600, on_update=lambda j: print(j["progress"]))
        fj.download_artifact(job["id"], "probe.json", Path("probe.json"))

Every method returns the decoded JSON and raises `ApiError(status, code, message)` on an error.
"""

from __future__ import annotations

import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")
CHUNK = 1024 * 1024


class ApiError(Exception):
    """An error answer of the API (or an unreachable API, with status 0)."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class WaitTimeout(TimeoutError):
    """`Client.wait` gave up before the job ended."""


def _error(resp: httpx.Response) -> ApiError:
    try:
        err = resp.json()["error"]
        return ApiError(resp.status_code, str(err["code"]), str(err["message"]), err.get("details"))
    except (ValueError, KeyError, TypeError):
        return ApiError(resp.status_code, "http_error", resp.text[:500] or resp.reason_phrase)


def zip_folder(folder: Path, dest: Path) -> Path:
    """Zip `folder`'s files (paths relative to it, hidden files left out) into `dest`."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if path.is_file() and not any(p.startswith(".") for p in rel.parts):
                zf.write(path, rel.as_posix())
    return dest


class Client:
    """The facejobs API over HTTP; `http` lets a caller pass its own httpx.Client (e.g. a TestClient)."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0, http: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._owns_http = http is None
        self.http = http or httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # ---- plumbing ---------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _request(self, method: str, path: str, ok: tuple[int, ...] = (200, 201), **kwargs: Any) -> httpx.Response:
        headers = {"X-API-Key": self.api_key, **kwargs.pop("headers", {})}
        try:
            resp = self.http.request(method, self._url(path), headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(0, "unreachable", f"{method} {path}: {exc}") from exc
        if resp.status_code not in ok:
            raise _error(resp)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    @staticmethod
    def _params(**params: Any) -> dict[str, Any]:
        return {k: v for k, v in params.items() if v is not None}

    # ---- health -----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/healthz")
        return result

    def ready(self) -> dict[str, Any]:
        """Readiness of each component; returned (not raised) when some are down (503)."""
        result: dict[str, Any] = self._request("GET", "/readyz", ok=(200, 503)).json()
        return result

    # ---- jobs -------------------------------------------------------------------------------
    def submit(
        self,
        kind: str,
        params: dict[str, Any] | None = None,
        queue: str | None = None,
        idempotency_key: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        notes: str | None = None,
    ) -> dict[str, Any]:
        """Submit a job; with `idempotency_key`, a repeat returns the job created the first time."""
        body = self._params(kind=kind, params=params or {}, queue=queue, priority=priority, max_attempts=max_attempts,
                            name=name, tags=tags, notes=notes)  # fmt: skip
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: dict[str, Any] = self._json("POST", "/jobs", json=body, headers=headers)
        return result

    def get_job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/jobs/{quote(job_id, safe='')}")
        return result

    def list_jobs(
        self,
        status: str | None = None,
        kind: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
        **filters: Any,
    ) -> dict[str, Any]:
        """One page `{"data": [...], "next_cursor": ...}` of jobs, newest first.

        `filters`: `tag` (a list: every tag must match), `q` (text in name, notes or kind), `name_prefix`,
        `created_after` / `created_before` (ISO times), `parent_id`.
        """
        params = self._params(status=status, kind=kind, cursor=cursor, limit=limit, **filters)
        result: dict[str, Any] = self._json("GET", "/jobs", params=params)
        return result

    def iter_jobs(
        self, status: str | None = None, kind: str | None = None, page_size: int = 100, **filters: Any
    ) -> Iterator[dict[str, Any]]:
        """Every job (matching the filters, as `list_jobs`), newest first, fetched page by page."""
        cursor: str | None = None
        while True:
            page = self.list_jobs(status=status, kind=kind, cursor=cursor, limit=page_size, **filters)
            yield from page["data"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def update_job(self, job_id: str, **labels: Any) -> dict[str, Any]:
        """PATCH a job's labels: `name`, `notes` (None clears), `tags` (replace), `add_tags`, `remove_tags`."""
        result: dict[str, Any] = self._json("PATCH", f"/jobs/{quote(job_id, safe='')}", json=labels)
        return result

    def tag(self, job_id: str, add: list[str] | None = None, remove: list[str] | None = None) -> dict[str, Any]:
        """Add and remove tags of a job (one request); the job."""
        return self.update_job(job_id, **self._params(add_tags=add or None, remove_tags=remove or None))

    def delete_job(self, job_id: str) -> dict[str, Any]:
        """Delete an ended job with its files and children: `{"job_ids", "objects", "bytes"}`."""
        result: dict[str, Any] = self._json("DELETE", f"/jobs/{quote(job_id, safe='')}")
        return result

    def compare(self, job_ids: list[str]) -> dict[str, Any]:
        """`GET /compare`: params diff, series, final metrics, plots and seed groups of up to 50 jobs."""
        result: dict[str, Any] = self._json("GET", "/compare", params={"ids": ",".join(job_ids)})
        return result

    def compare_csv(self, job_ids: list[str], table: str = "jobs") -> str:
        """The comparison as CSV: one row per job (`table="jobs"`) or per seed group (`"groups"`)."""
        params = {"ids": ",".join(job_ids), "format": "csv", "table": table}
        return self._request("GET", "/compare", params=params).text

    def storage(self) -> dict[str, Any]:
        """Bytes this key stores (artifacts, datasets, models)."""
        result: dict[str, Any] = self._json("GET", "/keys/me/storage")
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", f"/jobs/{quote(job_id, safe='')}/cancel")
        return result

    def retry(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", f"/jobs/{quote(job_id, safe='')}/retry")
        return result

    def events(
        self, job_id: str, after: int | None = None, type: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The job's events with an id above `after`, oldest first."""
        params = self._params(after=after, type=type, limit=limit)
        page: dict[str, Any] = self._json("GET", f"/jobs/{quote(job_id, safe='')}/events", params=params)
        result: list[dict[str, Any]] = page["data"]
        return result

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll: float = 1.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job ends; `on_update` sees every poll's job. `WaitTimeout` after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} is still {job['status']} after {timeout}s")
            time.sleep(poll)

    # ---- artifacts --------------------------------------------------------------------------
    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", f"/jobs/{quote(job_id, safe='')}/artifacts")
        return result

    def download_artifact(self, job_id: str, name: str, dest: Path) -> Path:
        """Save artifact `name` to `dest`, following the redirect to the object store if there is one."""
        path = f"/jobs/{quote(job_id, safe='')}/artifacts/{quote(name, safe='/')}"
        headers = {"X-API-Key": self.api_key}
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.http.stream("GET", self._url(path), headers=headers, follow_redirects=False) as resp:
            if resp.status_code in (301, 302, 303, 307, 308):
                # The presigned URL carries its own signature: the API key is not sent to the store.
                return self._download(resp.headers["location"], dest)
            if resp.status_code != 200:
                resp.read()
                raise _error(resp)
            self._save(resp, dest)
        return dest

    def _download(self, url: str, dest: Path) -> Path:
        with httpx.Client(timeout=self.timeout) as plain, plain.stream("GET", url) as resp:
            if resp.status_code != 200:
                resp.read()
                raise ApiError(resp.status_code, "store_error", resp.text[:500])
            self._save(resp, dest)
        return dest

    @staticmethod
    def _save(resp: httpx.Response, dest: Path) -> None:
        part = dest.with_name(dest.name + ".part")
        with part.open("wb") as f:
            for chunk in resp.iter_bytes(CHUNK):
                f.write(chunk)
        part.replace(dest)

    # ---- logs -------------------------------------------------------------------------------
    def logs(
        self, job_id: str, attempt: int | None = None, offset: int = 0, wait_seconds: float | None = None
    ) -> dict[str, Any]:
        """One page of an attempt's log (default: the latest) from byte `offset`: text, next_offset, done."""
        params = self._params(attempt=attempt, offset=offset, wait_seconds=wait_seconds)
        result: dict[str, Any] = self._json("GET", f"/jobs/{quote(job_id, safe='')}/logs", params=params)
        return result

    def iter_logs(
        self, job_id: str, attempt: int | None = None, follow: bool = False, poll: float = 0.5
    ) -> Iterator[str]:
        """The log's text as it comes: to its end now, or with `follow` until the job ends.

        Without `attempt`, following moves on to each new attempt (a header line before each).
        """
        offset, current = 0, attempt
        while True:
            # Attempt 0 (not started yet) is asked as "the latest", so the first attempt is picked up when it starts.
            page = self.logs(job_id, attempt=current or None, offset=offset, wait_seconds=1.0 if follow else None)
            if not current:
                current = page["attempt"]
            if page["text"]:
                yield page["text"]
            offset = page["next_offset"]
            if not page["done"]:
                if not follow and not page["text"]:
                    return  # caught up with a running attempt
                continue
            if not follow or attempt is not None:
                return
            if page["attempts"] > current:  # the next attempt began
                current, offset = current + 1, 0
                yield f"===== attempt {current} =====\n"
                continue
            if self.get_job(job_id)["status"] in TERMINAL:
                return
            time.sleep(poll)  # queued (again): wait for its next attempt

    def download_logs(self, job_id: str, dest: Path, attempt: int | None = None) -> Path:
        """Save the whole log (one attempt, or every attempt) to `dest`."""
        path = f"/jobs/{quote(job_id, safe='')}/logs/download"
        dest.parent.mkdir(parents=True, exist_ok=True)
        params = self._params(attempt=attempt)
        with self.http.stream("GET", self._url(path), headers={"X-API-Key": self.api_key}, params=params) as resp:
            if resp.status_code != 200:
                resp.read()
                raise _error(resp)
            self._save(resp, dest)
        return dest

    # ---- kinds, datasets, models, workers ---------------------------------------------------
    def kinds(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/kinds")
        return result

    def upload_dataset(self, path: Path, name: str | None = None) -> dict[str, Any]:
        """Upload an archive (.zip, .tar, .tar.gz, .tgz), or a folder zipped on the fly into a temp file."""
        path = Path(path)
        if path.is_dir():
            with tempfile.TemporaryDirectory() as tmp:
                archive = zip_folder(path, Path(tmp) / f"{path.name or 'dataset'}.zip")
                return self._upload("/datasets", archive, self._params(name=name or path.name))
        return self._upload("/datasets", path, self._params(name=name))

    def list_datasets(self, cursor: str | None = None, limit: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/datasets", params=self._params(cursor=cursor, limit=limit))
        return result

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/datasets/{quote(dataset_id, safe='')}")
        return result

    def upload_model(
        self, path: Path, name: str | None = None, kind: str = "generator", meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Upload a model file (`kind` generator, facenet or backbone) with optional JSON `meta`."""
        import json

        fields = self._params(name=name, kind=kind, meta=json.dumps(meta) if meta is not None else None)
        return self._upload("/models", Path(path), fields)

    def list_models(self, cursor: str | None = None, limit: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/models", params=self._params(cursor=cursor, limit=limit))
        return result

    def get_model(self, model_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/models/{quote(model_id, safe='')}")
        return result

    def verify(
        self,
        image_a: Path | str,
        image_b: Path | str,
        model: str,
        timeout: float | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Are the faces of two images the same person? `POST /verify`, waiting up to `timeout` s (server default 30).

        Each image is a local file path, or a "dataset:<id>/<path>" string naming one of your dataset's
        images. Returns the result (`same`, `distance`, `threshold`, ...), or `{"job_id", "status",
        "message"}` (HTTP 202) when the job did not finish in time: `wait(job_id)` then has it.
        Extra `params` (threshold, weights, detector, min_face_size, flip_tta...) go as form fields.
        """
        import contextlib

        fields = {"model": model, **{k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}}
        with contextlib.ExitStack() as stack:
            files: dict[str, Any] = {}
            for name, image in (("image_a", image_a), ("image_b", image_b)):
                if isinstance(image, str) and image.startswith("dataset:"):
                    files[name] = (None, image)  # a plain form field, still sent as multipart
                else:
                    path = Path(image)
                    files[name] = (path.name, stack.enter_context(path.open("rb")), "application/octet-stream")
            query = self._params(timeout=timeout)
            # The server waits up to `timeout`, then answers: give our own client that much longer.
            extra = {"timeout": (timeout if timeout is not None else 30.0) + self.timeout} if self._owns_http else {}
            resp = self._request("POST", "/verify", ok=(200, 202), data=fields, files=files, params=query, **extra)
        result: dict[str, Any] = resp.json()
        return result

    def workers(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/workers")
        return result

    def _upload(self, route: str, path: Path, fields: dict[str, str]) -> dict[str, Any]:
        # httpx streams the open file into the multipart body; it is never read whole into memory.
        with path.open("rb") as f:
            files = {"file": (path.name, f, "application/octet-stream")}
            result: dict[str, Any] = self._json("POST", route, data=fields, files=files, timeout=None)
        return result
