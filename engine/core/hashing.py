"""Hashes of configs: what makes an output's provenance comparable across runs."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def config_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
