"""A Python client for the Distillery API; the CLI is built on it.

    client = Client("http://127.0.0.1:8000", key)
    teacher = client.upload("teacher.pt", "teacher")
    job = client.submit({...})
    job = client.wait(job.id, on_progress=lambda j: print(j.progress))
    client.download(job.id, "student.pt", "out/")

Connection errors, 5xx and 429 answers are retried with exponential backoff (honouring
`Retry-After`); job submissions carry an idempotency key so a retry never makes two jobs.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from app.schemas import (
    TERMINAL_STATUSES,
    ArtifactPublic,
    EventPublic,
    FilePublic,
    JobPublic,
    MetricPublic,
    TrialPublic,
)
from app.storage import sha256_of

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Written beside downloaded artifacts: which job they are, so another job's download into
# the same folder is refused instead of silently mixing the two.
DOWNLOAD_MARKER = ".distillery-job.json"


class DistilleryError(Exception):
    """An error answer from the API: HTTP status, stable code and the server's message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({status} {code})")
        self.status = status
        self.code = code
        self.message = message


class DirectoryInUse(Exception):
    """A download folder already holds another job's artifacts."""


class Client:
    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
            transport=transport,
        )
        # Downloads redirected to an object store's presigned URL go through a client that
        # carries no API key: the URL is its own credential, and the store is not ours.
        self._store = httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()
        self._store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # Transport ------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send with retries on connection errors, 5xx and 429; raise DistilleryError on 4xx."""
        rewind = kwargs.pop("rewind", None)
        for attempt in range(self.retries + 1):
            if rewind is not None:
                rewind()
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
                time.sleep(self._delay(attempt, None))
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                time.sleep(self._delay(attempt, response.headers.get("retry-after")))
                continue
            return _checked(response)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            return float(retry_after)
        return float(self.backoff * 2**attempt)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # Files ----------------------------------------------------------------------------
    def upload(self, path: str | Path, purpose: str, *, reuse: bool = False) -> FilePublic:
        """Upload a file; with `reuse`, return an earlier upload of the same bytes instead."""
        path = Path(path)
        digest = sha256_of(path)
        if reuse:
            for existing in self.files(purpose=purpose, sha256=digest):
                return existing
        with path.open("rb") as handle:
            body = self._json(
                "POST",
                "/v1/files",
                data={"purpose": purpose},
                files={"file": (path.name, handle, "application/octet-stream")},
                headers={"Idempotency-Key": f"upload-{purpose}-{digest}"},
                rewind=lambda: handle.seek(0),
            )
        return FilePublic.model_validate(body)

    def files(self, purpose: str | None = None, sha256: str | None = None) -> list[FilePublic]:
        params = {k: v for k, v in {"purpose": purpose, "sha256": sha256}.items() if v}
        body = self._json("GET", "/v1/files", params=params)
        return [FilePublic.model_validate(f) for f in body["data"]]

    # Jobs -----------------------------------------------------------------------------
    def submit(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> JobPublic:
        key = idempotency_key or f"submit-{uuid.uuid4().hex}"
        body = self._json("POST", "/v1/jobs", json=spec, headers={"Idempotency-Key": key})
        return JobPublic.model_validate(body)

    def get(self, job_id: str) -> JobPublic:
        return JobPublic.model_validate(self._json("GET", f"/v1/jobs/{job_id}"))

    def jobs(
        self, *, limit: int = 20, after: str | None = None, status: str | None = None
    ) -> tuple[list[JobPublic], bool]:
        params: dict[str, Any] = {"limit": limit}
        params.update({k: v for k, v in {"after": after, "status": status}.items() if v})
        body = self._json("GET", "/v1/jobs", params=params)
        return [JobPublic.model_validate(j) for j in body["data"]], bool(body["has_more"])

    def cancel(self, job_id: str) -> JobPublic:
        return JobPublic.model_validate(self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def wait(
        self,
        job_id: str,
        *,
        on_progress: Callable[[JobPublic], None] | None = None,
        poll_seconds: float = 1.0,
        timeout: float | None = None,
    ) -> JobPublic:
        """Poll until the job ends; `on_progress` sees every poll's job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.status in TERMINAL_STATUSES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout} s")
            time.sleep(poll_seconds)

    def events(self, job_id: str, *, after: int | None = None) -> Iterator[EventPublic]:
        """Stream the job's events as they happen (server-sent events) until it ends;
        a dropped connection resumes after the last event received."""
        last = after
        for attempt in range(self.retries + 1):
            params = {} if last is None else {"after": last}
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    params=params,
                    headers={"Accept": "text/event-stream"},
                    timeout=None,
                ) as response:
                    _checked(response)
                    for kind, data in _sse(response.iter_lines()):
                        if kind == "end":
                            return
                        event = EventPublic.model_validate_json(data)
                        last = event.id
                        yield event
                return
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
                time.sleep(self._delay(attempt, None))

    def list_events(self, job_id: str, *, after: int | None = None) -> list[EventPublic]:
        """The events recorded so far (after the given event id), without streaming."""
        params = {} if after is None else {"after": after}
        body = self._json("GET", f"/v1/jobs/{job_id}/events", params=params)
        return [EventPublic.model_validate(e) for e in body["data"]]

    def metrics(self, job_id: str, name: str | None = None) -> list[MetricPublic]:
        params = {"name": name} if name else {}
        body = self._json("GET", f"/v1/jobs/{job_id}/metrics", params=params)
        return [MetricPublic.model_validate(m) for m in body["data"]]

    def trials(self, job_id: str) -> list[TrialPublic]:
        """A search's trials, in order."""
        body = self._json("GET", f"/v1/jobs/{job_id}/trials")
        return [TrialPublic.model_validate(t) for t in body["data"]]

    def report(self, job_id: str) -> dict[str, Any]:
        report: dict[str, Any] = self._json("GET", f"/v1/jobs/{job_id}/report")
        return report

    def artifacts(self, job_id: str) -> list[ArtifactPublic]:
        body = self._json("GET", f"/v1/jobs/{job_id}/artifacts")
        return [ArtifactPublic.model_validate(a) for a in body["data"]]

    def download_job(
        self,
        job_id: str,
        directory: str | Path,
        names: list[str] | None = None,
        *,
        overwrite: bool = False,
    ) -> list[Path]:
        """Download a job's artifacts (all, or those named) into `directory`, and record
        there which job they belong to. A folder holding another job's artifacts raises
        DirectoryInUse unless `overwrite`, which also removes that job's files."""
        directory = Path(directory)
        names = names or [a.name for a in self.artifacts(job_id)]
        previous = _downloaded(directory)
        other = previous.get("job_id")
        if other != job_id:
            clashing = sorted(set(previous.get("files", [])) | _present(directory, names))
            if clashing and not overwrite:
                whose = f"job {other}" if other else "an earlier download"
                raise DirectoryInUse(
                    f"{directory}/ already holds {', '.join(clashing)} from {whose}; "
                    "pass --overwrite to replace them, or choose another --dir."
                )
            for stale in previous.get("files", []):
                if stale not in names and "/" not in stale and stale != DOWNLOAD_MARKER:
                    (directory / stale).unlink(missing_ok=True)
            previous = {}
        directory.mkdir(parents=True, exist_ok=True)
        files = sorted(set(previous.get("files", [])) | set(names))
        marker = {"job_id": job_id, "url": self.url, "files": files}
        (directory / DOWNLOAD_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        return [self.download(job_id, name, directory) for name in names]

    def download(self, job_id: str, name: str, dest: str | Path) -> Path:
        """Stream an artifact to `dest` (a folder or a file path); the sha256 is checked."""
        dest = Path(dest)
        target = dest / name if dest.is_dir() else dest
        partial = target.with_name(target.name + ".partial")
        for attempt in range(self.retries + 1):
            try:
                return self._download_once(job_id, name, target, partial)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
                time.sleep(self._delay(attempt, None))
        raise AssertionError("unreachable")

    def _download_once(self, job_id: str, name: str, target: Path, partial: Path) -> Path:
        digest = hashlib.sha256()
        with self._http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as response:
            _checked(response)
            expected = response.headers.get("x-content-sha256")
            location = response.headers.get("location") if response.is_redirect else None
            if location is None:
                _save(response, partial, digest)
        if location is not None:  # a presigned URL: fetched without the API key
            with self._store.stream("GET", location) as stored:
                _checked(stored)
                _save(stored, partial, digest)
        if expected and digest.hexdigest() != expected:
            partial.unlink(missing_ok=True)
            raise DistilleryError(200, "checksum_mismatch", f"{name} arrived corrupted; retry.")
        partial.replace(target)
        return target


def _save(response: httpx.Response, partial: Path, digest: Any) -> None:
    with partial.open("wb") as handle:
        for chunk in response.iter_bytes(1024 * 1024):
            digest.update(chunk)
            handle.write(chunk)


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code < 400:
        return response
    response.read()
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:500] or response.reason_phrase
    raise DistilleryError(response.status_code, code, message)


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from a server-sent event stream."""
    kind, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def _downloaded(directory: Path) -> dict[str, Any]:
    """What the folder's marker says was downloaded into it (empty when none)."""
    try:
        marker = json.loads((directory / DOWNLOAD_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _present(directory: Path, names: list[str]) -> set[str]:
    return {name for name in names if (directory / name).exists()}


def load_spec_file(path: Path) -> dict[str, Any]:
    """A job spec from YAML or JSON; a syntax error is a ValueError naming the file, line
    and column."""
    text = path.read_text()
    if path.suffix.lower() in {".yaml", ".yml"}:
        import yaml

        try:
            loaded = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            problem = exc.problem or exc.context or "is not valid YAML"
            raise ValueError(f"{where}: {problem} (YAML syntax)") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: is not valid YAML ({exc})") from None
    else:
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}:{exc.colno}: {exc.msg} (JSON syntax)") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} does not hold a job spec (a mapping at the top level).")
    return loaded
