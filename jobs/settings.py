"""One typed settings object; nothing else in facejobs reads the environment.

Every field can be set as `FACEJOBS_<NAME>` (or in a `.env` file). The defaults are the embedded
configuration: a SQLite file and a local artifact folder under `./.facejobs`, Redis on localhost.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "dev", "dev-pepper", "minioadmin", "secret"}


class Settings(BaseSettings):
    """All configuration of facejobs, grouped by concern."""

    model_config = SettingsConfigDict(env_prefix="FACEJOBS_", env_file=".env", extra="ignore")

    env: Literal["dev", "test", "prod"] = "dev"
    home: Path = Field(default=Path(".facejobs"), description="Folder of the embedded stack's files.")

    # database
    database_url: str = ""
    db_pool_size: int = 5
    db_connect_timeout_seconds: int = 5

    # broker
    broker_url: str = "redis://127.0.0.1:6379/0"
    broker_fallback_embedded: bool = True
    broker_key_prefix: str = ""
    broker_poll_seconds: float = 0.1
    visibility_timeout_seconds: int = 7 * 24 * 3600

    # artifact store
    store_backend: Literal["local", "s3"] = "local"
    store_dir: Path | None = None
    s3_endpoint: str = "127.0.0.1:9000"
    s3_public_endpoint: str | None = None
    s3_access_key: str = "minioadmin"
    s3_secret_key: SecretStr = SecretStr("minioadmin")
    s3_bucket: str = "facejobs"
    s3_region: str = "us-east-1"
    s3_secure: bool = False
    presign_seconds: int = 3600
    store_retries: int = 4
    store_backoff_seconds: float = 0.5

    # workers
    lease_seconds: int = 60
    heartbeat_seconds: float = 5.0
    progress_min_interval_seconds: float = 1.0
    reaper_interval_seconds: float = 15.0
    requeue_stale_queued_seconds: float = Field(
        300.0,
        description="A queued job whose message was sent this long ago and whose broker queue is empty lost its "
        "message (broker restarted without persistence, worker killed before the claim): the reaper re-sends it.",
    )
    worker_stale_seconds: int = 120
    max_tasks_per_child: int = 20
    run_reaper: bool = Field(True, description="Run the reaper loop in this worker's main process.")
    cuda_visible_devices: str | None = Field(
        None, validation_alias="CUDA_VISIBLE_DEVICES", description="The GPU this worker is pinned to."
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads torch may use in each worker process (None: torch's default, one per core). "
        "Set it to cores / worker processes where several CPU workers share a host: oversubscribed OpenMP "
        "threads spin against each other and run many times slower.",
    )
    default_max_attempts: int = 3
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="Where a worker runs its jobs: auto (its visible GPU if torch sees one, else the CPU), cpu, "
        "or cuda (a job on a worker without a usable GPU is handed back, not failed).",
    )
    deterministic: bool = Field(
        False,
        description="Deterministic algorithms in every worker process (torch.use_deterministic_algorithms, "
        "CUBLAS_WORKSPACE_CONFIG, no cuDNN benchmark): bitwise-repeatable runs on one device type, a little slower.",
    )
    task_events: bool = Field(
        False,
        description="Celery task events (worker_send_task_events, task_send_sent_event), for Flower and "
        "`celery events`. The cost: 4 more broker messages per job (task-sent from the API, task-received, "
        "task-started and task-succeeded from the worker, two of them on the job's own path); on Redis they "
        "are pub/sub messages, dropped when no monitor listens.",
    )
    shard_cache_bytes: int = Field(
        2 * 1024**3,
        ge=1024**2,
        description="Disk a worker gives to streamed dataset shards (tar shards), least recently used out.",
    )
    max_device_error_requeues: int = Field(
        3,
        ge=0,
        description="A job that hit a fatal device error (torch.AcceleratorError) is handed to a fresh worker "
        "process this many times, not counted against its attempts; the next such error fails it.",
    )

    # API server and the CLI's view of it
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_url: str = ""
    api_key: SecretStr | None = None

    # auth
    key_pepper: SecretStr = SecretStr("dev-pepper")

    # limits
    max_upload_bytes: int = 2 * 1024**3
    max_image_pixels: int = 40_000_000
    max_archive_members: int = 200_000
    max_archive_uncompressed_bytes: int = 20 * 1024**3
    # Unpacked bytes per archive byte; past `archive_ratio_free_bytes` unpacked, a higher ratio is a bomb.
    max_archive_ratio: float = 100.0
    archive_ratio_free_bytes: int = 256 * 1024**2
    max_params_bytes: int = 64 * 1024
    page_size_max: int = 200

    # data
    data_dir: Path = Field(default=REPO_ROOT.parent / "shared" / "data")
    require_data: bool = False
    require_browser: bool = Field(False, description="Fail (not skip) browser tests when Chromium is missing.")
    require_gpu: bool = Field(False, description="Fail (not skip) gpu-marked tests when torch sees no CUDA device.")

    @field_validator("database_url")
    @classmethod
    def _normalise_db_url(cls, v: str) -> str:
        v = v.strip()
        if v.startswith("postgres://"):
            v = "postgresql+psycopg://" + v[len("postgres://") :]
        elif v.startswith("postgresql://"):
            v = "postgresql+psycopg://" + v[len("postgresql://") :]
        return v

    @model_validator(mode="after")
    def _refuse_placeholders_outside_dev(self) -> Settings:
        if self.env == "prod":
            if self.key_pepper.get_secret_value() in PLACEHOLDER_SECRETS:
                raise ValueError("FACEJOBS_KEY_PEPPER must be set to a real secret when FACEJOBS_ENV=prod")
            if self.store_backend == "s3" and self.s3_secret_key.get_secret_value() in PLACEHOLDER_SECRETS:
                raise ValueError("FACEJOBS_S3_SECRET_KEY must be set to a real secret when FACEJOBS_ENV=prod")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL; the embedded default is a SQLite file in `home`."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'facejobs.db').resolve()}"

    @property
    def resolved_store_dir(self) -> Path:
        """Folder of the local artifact store."""
        return (self.store_dir or self.home / "artifacts").resolve()

    @property
    def embedded_broker_url(self) -> str:
        """kombu's SQLAlchemy transport on a SQLite file: a broker with no server."""
        return f"sqla+sqlite:///{(self.home / 'broker.db').resolve()}"

    @property
    def resolved_api_url(self) -> str:
        return self.api_url.rstrip("/") or f"http://{self.api_host}:{self.api_port}"

    @property
    def dev_key_file(self) -> Path:
        """Where `facejobs up` leaves the development API key for the CLI on the same machine."""
        return self.home / "dev-api-key"

    @property
    def mnist_dir(self) -> Path:
        return self.data_dir / "mnist"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests clear the cache after changing the environment)."""
    return Settings()
