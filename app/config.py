"""All configuration, read once from `DISTILLERY_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """One settings object for the API, the worker and the CLI.

    The embedded default needs no servers: SQLite for data and broker, files on disk under
    `data_dir`. Production sets `database_url` to PostgreSQL and `broker_url` to Redis.
    """

    model_config = SettingsConfigDict(env_prefix="DISTILLERY_", env_file=None, extra="ignore")

    data_dir: Path = Field(Path("data"), description="Uploaded files, artifacts, SQLite files.")
    database_url: str | None = Field(None, description="Defaults to SQLite under data_dir.")
    broker_url: str | None = Field(None, description="Defaults to SQLite (kombu) under data_dir.")
    queue: str = Field(
        "distillery", description="Celery queue that jobs without resources.queue go to."
    )
    control_queue: str = Field(
        "distillery.control",
        description="Queue of file validation and webhook tasks; every worker serves it.",
    )
    storage_url: str | None = Field(
        None,
        description="Where uploads, checkpoints and artifacts live: a directory (default: "
        "the data dir) or s3://bucket/prefix on an S3-compatible store, configured the "
        "standard AWS way (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_DEFAULT_REGION).",
    )
    storage_public_url: str | None = Field(
        None,
        description="The object store's address as clients reach it, used in presigned "
        "download URLs (e.g. https://s3.example.com when workers use http://minio:9000).",
    )
    downloads: Literal["redirect", "stream"] | None = Field(
        None,
        description="Artifact downloads: `redirect` (307 to a presigned URL; default for S3) "
        "or `stream` through the API with Range support (default for a directory).",
    )
    presign_seconds: int = Field(
        300, ge=1, le=7 * 24 * 3600, description="How long a presigned download URL works."
    )
    input_cache_bytes: int = Field(
        20 * 1024**3,
        ge=0,
        description="Disk for a worker's copies of input files fetched from an object store "
        "(kept by sha256, least recently used dropped first; 0: keep only the running job's).",
    )
    broker_poll_seconds: float = Field(
        0.1, gt=0.0, description="How often a worker polls the embedded SQLite broker."
    )
    max_upload_bytes: int = Field(2 * 1024**3, ge=1, description="Largest accepted upload.")
    tenant_quota_bytes: int = Field(
        100 * 1024**3, ge=0, description="Most bytes of uploads one tenant may keep; 0: no cap."
    )
    auth_cache_seconds: float = Field(
        10.0,
        ge=0.0,
        description="How long an API process remembers a key's tenant; a key revoked by "
        "another process works on it until then. 0: look the key up on every request.",
    )
    read_pool_size: int = Field(
        10,
        ge=0,
        description="PostgreSQL only: connections of the API's asyncpg pool that serves the "
        "hot read (GET /v1/jobs/{id}) on the event loop, one prepared statement a request. "
        "0: that read goes through SQLAlchemy in the threadpool like every other (behind a "
        "PgBouncer in transaction mode, which drops prepared statements).",
    )
    rate_limit_per_minute: int = Field(
        1200, ge=0, description="Requests per API key per minute; 0 turns the limit off."
    )
    max_json_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest request body other than a file upload (a job spec is a few KB).",
    )
    max_student_params: int = Field(
        100_000_000,
        ge=1,
        description="Largest student (parameters) a job may ask for; training holds about "
        "16 bytes per parameter (weights, gradients, optimizer state).",
    )
    max_event_streams: int = Field(
        20, ge=1, description="Event streams (SSE) one tenant may hold open per API process."
    )
    progress_flush_seconds: float = Field(
        1.0, ge=0.0, description="Least time between two progress/metric writes of a job."
    )
    cancel_poll_seconds: float = Field(0.5, ge=0.0, description="How often a job checks cancel.")
    broker_check_timeout_seconds: float = Field(2.0, gt=0.0)
    heartbeat_seconds: float = Field(10.0, gt=0.0, description="How often a running job says so.")
    lease_seconds: float = Field(
        60.0, gt=0.0, description="A job whose heartbeat is older is taken to have lost its worker."
    )
    max_attempts: int = Field(3, ge=1, description="Runs of a job before it fails worker_lost.")
    worker_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="CPU threads a worker's training uses (OMP_NUM_THREADS); 0: torch's "
        "default (all cores). Set it when several workers share a machine's cores.",
    )
    requeue_after_seconds: float = Field(
        600.0, gt=0.0, description="A job queued this long is sent to the broker again."
    )
    maintenance_seconds: float = Field(15.0, gt=0.0, description="How often workers sweep.")
    teacher_cache_bytes: int = Field(
        20 * 1024**3, ge=0, description="Disk for teacher outputs reused across jobs; 0: off."
    )
    checkpoint_every_steps: int = Field(
        500, ge=0, description="Checkpoint this often (and at every epoch end); 0: epochs only."
    )
    sse_poll_seconds: float = Field(0.5, gt=0.0)
    webhook_allow_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts webhooks may reach even though they resolve to private, loopback "
        "or link-local addresses (public addresses are always allowed).",
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0.0)
    webhook_max_attempts: int = Field(6, ge=1, le=20)
    webhook_backoff_seconds: float = Field(2.0, ge=0.0, description="First retry delay; doubles.")
    webhook_backoff_max_seconds: float = Field(
        3600.0, ge=0.0, description="The longest delay between two attempts of a webhook."
    )
    webhook_expire_seconds: float = Field(
        3 * 86400.0,
        gt=0.0,
        description="A webhook not delivered this long after its job ended is given up.",
    )
    webhook_claim_seconds: float = Field(
        60.0,
        gt=0.0,
        description="How long a sender owns a delivery it is sending (at least the timeout "
        "plus a margin is used); one that died mid-send lets it lapse and another tries.",
    )

    # Client side (the CLI's submit, watch, jobs, ...): flags win over these.
    url: str | None = Field(None, description="Server URL for the CLI, e.g. http://host:8000.")
    api_key: str | None = Field(None, description="API key for the CLI.")
    client_config: Path = Field(
        Path("~/.config/distillery/config.json"),
        description="Where `distillery up` writes, and the CLI reads, the URL and key.",
    )

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str | None) -> str | None:
        if value and "://" in value and not value.startswith(("s3://", "file://")):
            raise ValueError("use a directory or s3://bucket/prefix")
        if value and value.startswith("s3://") and not value[5:].split("/", 1)[0]:
            raise ValueError("name the bucket: s3://bucket/prefix")
        return value or None

    @model_validator(mode="after")
    def _redirect_needs_object_store(self) -> Settings:
        if self.downloads == "redirect" and not self.object_store:
            raise ValueError(
                "DISTILLERY_DOWNLOADS=redirect needs an object store "
                "(DISTILLERY_STORAGE_URL=s3://...); a directory is streamed"
            )
        return self

    @property
    def object_store(self) -> bool:
        return bool(self.storage_url and self.storage_url.startswith("s3://"))

    @property
    def download_mode(self) -> Literal["redirect", "stream"]:
        return self.downloads or ("redirect" if self.object_store else "stream")

    @property
    def input_cache_dir(self) -> Path:
        return self.resolved_data_dir / "input-cache"

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'distillery.db'}"

    @property
    def celery_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{self.resolved_data_dir / 'broker.db'}"

    @property
    def files_dir(self) -> Path:
        return self.resolved_data_dir / "files"

    @property
    def artifacts_dir(self) -> Path:
        return self.resolved_data_dir / "artifacts"

    @property
    def work_dir(self) -> Path:
        return self.resolved_data_dir / "work"

    @property
    def teacher_cache_dir(self) -> Path:
        return self.resolved_data_dir / "teacher-cache"

    @property
    def checkpoints_dir(self) -> Path:
        return self.resolved_data_dir / "checkpoints"


@lru_cache
def get_settings() -> Settings:
    return Settings()
