"""TLS between a run's scheduler, workers and clients: one self-signed certificate per
run (dask's `Security.temporary()`), written as files into the run's folder so that
processes started elsewhere (a batch job's srun tasks) can read them, and the dask
settings that make every process of the run use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TLS_FILES = {"ca": "tls-ca.pem", "cert": "tls-cert.pem", "key": "tls-key.pem"}


def write_certificates(run_dir: Path) -> None:
    from distributed.security import Security

    temporary = Security.temporary()  # one self-signed certificate for every role
    for key, text in (("ca", temporary.tls_ca_file), ("cert", temporary.tls_client_cert)):
        (run_dir / TLS_FILES[key]).write_text(text)
    key_path = run_dir / TLS_FILES["key"]
    key_path.touch(mode=0o600)
    key_path.write_text(temporary.tls_client_key)


def tls_config(run_dir: Path) -> dict[str, Any]:
    ca, cert, key = (str(run_dir / TLS_FILES[k]) for k in ("ca", "cert", "key"))
    return {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": ca,
        "distributed.comm.tls.scheduler.cert": cert,
        "distributed.comm.tls.scheduler.key": key,
        "distributed.comm.tls.worker.cert": cert,
        "distributed.comm.tls.worker.key": key,
        "distributed.comm.tls.client.cert": cert,
        "distributed.comm.tls.client.key": key,
    }
