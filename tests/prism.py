"""Start Prism (the OpenAPI mock and validating proxy) on 127.0.0.1 for a test.

Prism comes from ``$PRISM_BIN`` or ``<repo>/.cache/prism`` (installed by ``.ci/setup``);
without it the test is skipped, or failed under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_SECONDS = 120


def prism_binary() -> str:
    """The Prism executable (skip, or fail under CI, when it is missing)."""
    configured = os.environ.get("PRISM_BIN")
    path = Path(configured) if configured else REPO_ROOT / ".cache/prism/node_modules/.bin/prism"
    if not path.is_file():
        message = f"Prism not found at {path} (set $PRISM_BIN)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return str(path)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_prism(*args: str) -> Iterator[str]:
    """Run ``prism ARGS -p PORT -h 127.0.0.1`` until it listens; yield its base URL."""
    binary = prism_binary()
    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"prism-{port}.log"
    with open(log_path, "w+", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [binary, *args, "-p", str(port), "-h", "127.0.0.1"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"Prism exited early:\n{log.read()[-2000:]}")
                log.seek(0)
                if "Prism is listening" in log.read():
                    break
                time.sleep(0.25)
            else:
                pytest.fail(f"Prism did not start within {START_TIMEOUT_SECONDS} s")
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
    log_path.unlink(missing_ok=True)
