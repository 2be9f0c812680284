"""A local run is for its own user: its scheduler takes only clients holding the run's
TLS certificate, and its dashboard listens on 127.0.0.1 unless asked otherwise.

Each test starts `ngff-engine run` as a real process with its own local cluster, on a
slow user function so the run is still going while the test looks at its sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from safety_runs import slow_config, start_run

from engine.cli.commands import main
from engine.io.sample_zarr import write_sample


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return Path(write_sample(tmp_path / "image.zarr", (16, 64, 64), (4, 32, 32), "0.5"))


def listening(pid: int, timeout: float = 60) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on, once the run is on."""
    started = time.monotonic()
    process = psutil.Process(pid)
    while time.monotonic() - started < timeout:
        found = [
            (c.laddr.ip, c.laddr.port)
            for c in process.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        ]
        if len(found) >= 2:  # scheduler and dashboard
            return found
        time.sleep(0.1)
    raise AssertionError("the run never listened on two sockets")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def scheduler_port(ports: list[tuple[str, int]]) -> int:
    """The one that answers dask's protocol: the dashboard answers HTTP."""
    import urllib.request

    for _, port in ports:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        except OSError:
            return port
    raise AssertionError(f"no scheduler among {ports}")


def test_a_client_without_the_run_certificate_is_refused(tmp_path: Path, image: Path) -> None:
    from distributed import Client
    from distributed.security import Security

    proc = start_run(slow_config(tmp_path), image, "--quiet")
    try:
        port = scheduler_port(listening(proc.pid))
        # plain TCP, as another user of the machine would try
        with pytest.raises((OSError, TimeoutError)):
            Client(f"tcp://127.0.0.1:{port}", timeout=3)
        # TLS with a certificate of its own, not the run's
        with pytest.raises((OSError, TimeoutError)):
            Client(f"tls://127.0.0.1:{port}", security=Security.temporary(), timeout=3)
        assert proc.poll() is None, "the run ended before the test could knock"
    finally:
        stop(proc)


def test_dashboard_listens_on_localhost_only(tmp_path: Path, image: Path) -> None:
    proc = start_run(slow_config(tmp_path), image, "--quiet")
    try:
        ports = listening(proc.pid)
    finally:
        stop(proc)
    assert all(address == "127.0.0.1" for address, _ in ports), ports


def test_dashboard_address_flag(tmp_path: Path, image: Path) -> None:
    with socket_port() as port:
        pass
    proc = start_run(slow_config(tmp_path), image, "--quiet", "--dashboard", f"0.0.0.0:{port}")
    try:
        ports = listening(proc.pid)
    finally:
        stop(proc)
    assert ("0.0.0.0", port) in ports, ports
    assert all(a == "127.0.0.1" for a, p in ports if p != port), ports


class socket_port:
    """A free TCP port (closed again at once)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_validate_names_the_user_modules_a_config_imports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = slow_config(tmp_path, "user.slow:slow")
    assert main(["validate", str(config)]) == 0
    output = capsys.readouterr().out
    assert "imports user code: user.slow:slow" in output, output
