"""Real servers on 127.0.0.1 for the remote-store tests: Python's `http.server` serving a
folder, and moto's standalone S3 server. Each runs as its own process, started and
stopped by the fixtures in tests/conftest.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# moto accepts any key pair unless told to check them
S3_KEY, S3_SECRET = "testing-key", "testing-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        assert proc.poll() is None, f"server exited: {proc.stderr.read() if proc.stderr else ''}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@contextmanager
def _serve(argv: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    try:
        _wait_for(port, proc)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class HttpServer:
    root: Path  # the folder served
    url: str  # http://127.0.0.1:PORT

    def url_of(self, relpath: str) -> str:
        return f"{self.url}/{relpath}"


@contextmanager
def http_server(directory: Path) -> Iterator[HttpServer]:
    port = free_port()
    argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    with _serve([*argv, "--directory", str(directory)], port):
        yield HttpServer(directory, f"http://127.0.0.1:{port}")


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT

    @property
    def options(self) -> dict[str, Any]:
        """fsspec/s3fs storage options reaching this server."""
        return {"endpoint_url": self.endpoint, "key": S3_KEY, "secret": S3_SECRET}

    @property
    def env(self) -> dict[str, str]:
        """The same, as the AWS environment variables a CLI run reads."""
        return {
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(
            key=S3_KEY,
            secret=S3_SECRET,
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
            use_listings_cache=False,
        )

    def upload(self, folder: Path, bucket: str, name: str) -> str:
        """Copy a local zarr into `s3://bucket/name` (the bucket made if needed)."""
        fs = self.filesystem()
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        fs.put(str(folder), f"{bucket}/{name}", recursive=True)
        return f"s3://{bucket}/{name}"


@contextmanager
def s3_server(check_keys: bool = False) -> Iterator[S3Server]:
    """moto's standalone S3 server; `check_keys`: it refuses unknown keys (HTTP 403)."""
    port = free_port()
    env = dict(os.environ)
    if check_keys:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _serve(argv, port, env):
        yield S3Server(f"http://127.0.0.1:{port}")
