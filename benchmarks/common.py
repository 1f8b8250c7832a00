"""Shared helpers of the tap and target benchmarks.

- :func:`start_sandbox`: a Lago sandbox in its own process (its CPU and memory are not
  counted against the plugin being measured), with the admin endpoints as methods.
- :func:`run_measured`: run a command as a child process; wall time, CPU time and peak RSS
  of that child alone (``os.wait4``), optionally counting the Singer RECORD lines it prints.
- :func:`console_script`, :func:`write_json`: locate a plugin's command, write a config.
- :func:`print_table`, :func:`rate`, :func:`ratio`: the printed report.

Only the standard library and ``requests`` are used; ``os.wait4`` and ``ru_maxrss`` in KiB
(Linux) are assumed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

#: The repository root (the sandbox is started from here: ``python -m tests.lago_sandbox``).
REPO_ROOT = Path(__file__).resolve().parents[1]

#: Matches the start of a Singer RECORD line as the SDK or orjson writes it, with or
#: without spaces after the separators; group 1 is the stream name.
_RECORD_RE = re.compile(rb'^\{"type": ?"RECORD", ?"stream": ?"([^"]*)"', re.MULTILINE)


def console_script(name: str) -> str:
    """Path of a console script installed beside this interpreter (e.g. ``tap-lago``)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        msg = f"console script {name!r} not found beside {sys.executable}"
        raise FileNotFoundError(msg)
    return str(path)


def write_json(directory: Path, name: str, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``directory/name`` and return the path."""
    path = Path(directory) / name
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# Sandbox -------------------------------------------------------------------------------


class SandboxProcess:
    """A sandbox served by ``python -m tests.lago_sandbox`` in a child process.

    Attributes:
        url: API root, ``http://127.0.0.1:PORT/api/v1``.
        base_url: ``http://127.0.0.1:PORT`` (admin endpoints live under ``/_sandbox``).
        api_key: the accepted Bearer key.
        process: the child process.
        ready_seconds: how long it took to seed and start serving.
    """

    def __init__(self, process: subprocess.Popen[bytes], url: str, api_key: str, ready: float):
        self.process = process
        self.url = url
        self.base_url = url.removesuffix("/api/v1")
        self.api_key = api_key
        self.ready_seconds = ready
        self._http = requests.Session()

    def _admin(self, method: str, path: str, body: Any = None, timeout: float = 600) -> Any:
        response = self._http.request(
            method, f"{self.base_url}/_sandbox/{path}", json=body, timeout=timeout
        )
        response.raise_for_status()
        return response.json()

    def dump(self) -> dict[str, list[dict[str, Any]]]:
        """Every object of every resource, in list order (``GET /_sandbox/dump``)."""
        return t_dict(self._admin("GET", "dump"))

    def counts(self) -> dict[str, int]:
        """Number of objects per resource (from a dump)."""
        return {name: len(rows) for name, rows in self.dump().items()}

    def reset(self, seed: dict[str, Any] | None = None) -> dict[str, int]:
        """Re-seed (``POST /_sandbox/reset``); returns the counts per resource."""
        return t_dict(self._admin("POST", "reset", seed)["counts"])

    def upsert(self, resource: str, objects: dict[str, Any] | list[dict[str, Any]]) -> list:
        """Insert or merge objects (``POST /_sandbox/upsert/{resource}``)."""
        return list(self._admin("POST", f"upsert/{resource}", objects)[resource])

    def set_faults(self, rules: list[dict[str, Any]]) -> None:
        """Replace the fault rules (``[]`` clears)."""
        self._admin("POST", "faults", {"rules": rules})

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change behaviour settings, e.g. ``rate_limits="cloud"`` (``None``: off)."""
        return t_dict(self._admin("POST", "settings", settings)["settings"])

    def rate_limited(self) -> dict[str, int]:
        """429s answered so far per Cloud-limits bucket."""
        return t_dict(self._admin("GET", "rate_limits")["limited"])

    def requests(self, clear: bool = False) -> list[dict[str, Any]]:
        """The request log; ``clear=True`` empties it afterwards."""
        log = list(self._admin("GET", "requests")["requests"])
        if clear:
            self._admin("DELETE", "requests")
        return log

    def stop(self) -> None:
        """SIGTERM the sandbox and wait for it (kill after 10 s)."""
        self._http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> SandboxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def t_dict(value: Any) -> dict[str, Any]:
    """Checked cast of a JSON object."""
    if not isinstance(value, dict):
        msg = f"expected a JSON object, got {type(value).__name__}"
        raise TypeError(msg)
    return value


def start_sandbox(
    *,
    api_key: str = "bench-api-key",
    latency_ms: int = 0,
    rate_limits: Any = None,
    ready_timeout: float = 900,
    **seed: Any,
) -> SandboxProcess:
    """Start a sandbox process and wait for its URL line.

    Args:
        api_key: the key the sandbox accepts.
        latency_ms: delay added to every ``/api/v1`` request.
        rate_limits: Lago Cloud's gateway limits (``"cloud"``, or e.g. ``"default=25"``).
        ready_timeout: seconds to wait for the sandbox to seed and listen.
        **seed: seed options (``seed``, ``customers``, ``events``, ``months``, ``anchor``).

    Returns:
        The running sandbox; stop it with ``.stop()`` or use it as a context manager.
    """
    cmd = [sys.executable, "-m", "tests.lago_sandbox", "--port", "0", "--api-key", api_key]
    cmd += ["--latency-ms", str(latency_ms)]
    if rate_limits:
        cmd += ["--rate-limits", str(rate_limits)]
    for name, value in seed.items():
        if value is not None:
            cmd += [f"--{name}", str(value)]
    started = time.monotonic()
    process = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=None)
    assert process.stdout is not None
    url_box: list[str] = []

    def read_url() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode().strip()
            if line.startswith("LAGO_SANDBOX_URL="):
                url_box.append(line.split("=", 1)[1])
                return

    reader = threading.Thread(target=read_url, daemon=True)
    reader.start()
    reader.join(ready_timeout)
    if not url_box:
        process.kill()
        process.wait()
        msg = f"sandbox not ready after {ready_timeout:.0f} s: {' '.join(cmd)}"
        raise RuntimeError(msg)
    return SandboxProcess(process, url_box[0], api_key, time.monotonic() - started)


# Measured runs -------------------------------------------------------------------------


@dataclass
class RunResult:
    """What one measured child process did.

    Attributes:
        seconds: wall time from start to exit.
        cpu_seconds: user + system CPU time of the child (and children it waited for).
        peak_rss_mb: the child's peak resident set size (MiB, from ``ru_maxrss``).
        returncode: exit status.
        records: RECORD lines per stream (only with ``count_records=True``).
        stdout: the captured standard output (only with ``capture_stdout=True``).
        stderr_tail: the last lines of standard error (for error messages).
    """

    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    returncode: int
    records: Counter[str] = field(default_factory=Counter)
    stdout: bytes = b""
    stderr_tail: str = ""

    @property
    def total_records(self) -> int:
        """RECORD lines over every stream."""
        return sum(self.records.values())

    def check(self) -> RunResult:
        """Raise with the stderr tail unless the process exited 0; return self."""
        if self.returncode != 0:
            msg = f"exit status {self.returncode}:\n{self.stderr_tail}"
            raise RuntimeError(msg)
        return self


def _count_records(stream: IO[bytes], counts: Counter[str]) -> None:
    """Count RECORD lines per stream from a binary pipe, in large chunks."""
    rest = b""
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            break
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        data, rest = data[:cut], data[cut:]
        counts.update(m.decode() for m in _RECORD_RE.findall(data))
    counts.update(m.decode() for m in _RECORD_RE.findall(rest))


#: Measured children may cache compiled modules, as an installed plugin does (pip compiles
#: them at install); otherwise every start would compile the plugin's modules again.
CHILD_ENV = {"PYTHONDONTWRITEBYTECODE": ""}


def run_measured(
    cmd: list[str],
    *,
    stdin: IO[bytes] | Path | None = None,
    env: dict[str, str] | None = None,
    count_records: bool = False,
    capture_stdout: bool = False,
    timeout: float = 3600,
    cwd: Path = REPO_ROOT,
) -> RunResult:
    """Run ``cmd`` to completion and measure that child alone.

    Args:
        cmd: the command (e.g. ``[console_script("tap-lago"), "--config", path]``).
        stdin: a binary file object or a path to feed as standard input (default none).
        env: extra environment variables (added to this process's environment).
        count_records: read stdout and count Singer RECORD lines per stream (else stdout
            goes to /dev/null unless ``capture_stdout``).
        capture_stdout: keep the whole stdout in memory (for small outputs, e.g. STATE).
        timeout: seconds before the child is killed (the result then has a nonzero
            return code).
        cwd: working directory.

    Returns:
        The :class:`RunResult`; peak RSS comes from ``os.wait4`` on this child only.
    """
    stdin_file: IO[bytes] | None
    opened = None
    if isinstance(stdin, Path):
        stdin_file = opened = stdin.open("rb")
    else:
        stdin_file = stdin
    piped = count_records or capture_stdout
    full_env = {**os.environ, **(env or {})}
    stderr_lines: list[bytes] = []
    counts: Counter[str] = Counter()
    captured: list[bytes] = []
    started = time.monotonic()
    process = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=full_env,
        stdin=stdin_file if stdin_file is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if piped else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def drain_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            stderr_lines.append(line)
            if len(stderr_lines) > 200:
                del stderr_lines[:100]

    def drain_stdout() -> None:
        assert process.stdout is not None
        if count_records:
            _count_records(process.stdout, counts)
        else:
            captured.append(process.stdout.read())

    threads = [threading.Thread(target=drain_stderr, daemon=True)]
    if piped:
        threads.append(threading.Thread(target=drain_stdout, daemon=True))
    for thread in threads:
        thread.start()
    killer = threading.Timer(timeout, process.kill)
    killer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        killer.cancel()
    seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    for thread in threads:
        thread.join()
    if opened is not None:
        opened.close()
    if process.stdout is not None:
        process.stdout.close()
    if process.stderr is not None:
        process.stderr.close()
    if capture_stdout and count_records:
        captured = []
    return RunResult(
        seconds=seconds,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        returncode=process.returncode,
        records=counts,
        stdout=b"".join(captured),
        stderr_tail=b"".join(stderr_lines[-40:]).decode(errors="replace"),
    )


# Report --------------------------------------------------------------------------------


def rate(count: float, seconds: float) -> float:
    """Items per second (0 when no time elapsed)."""
    return count / seconds if seconds > 0 else 0.0


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` (0 when the denominator is 0)."""
    return numerator / denominator if denominator else 0.0


def print_table(
    title: str, headers: list[str], rows: list[list[Any]], file: IO[str] | None = None
) -> None:
    """Print an aligned plain-text table (numbers right-aligned, floats with commas)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    numeric = [
        all(isinstance(row[i], (int, float)) for row in rows) if rows else False
        for i in range(len(headers))
    ]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)
        ).rstrip()

    out = file or sys.stdout
    print(f"\n{title}", file=out)
    print(line(headers), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in text:
        print(line(row), file=out)
    out.flush()
