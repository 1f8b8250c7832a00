"""GETs over the tap's own keep-alive connections (``WireAdapter``), requests' way otherwise."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from tap_lago import wire
from tap_lago.transport import WireAdapter

from tests.tap.conftest import run_tap, tap_config
from tests.tap.test_plain_loop import lines, without_sync_times

ROOT = Path(__file__).resolve().parents[2]


def test_both_plugins_carry_the_same_wire_module() -> None:
    tap = (ROOT / "tap-lago" / "tap_lago" / "wire.py").read_text()
    target = (ROOT / "target-lago" / "target_lago" / "wire.py").read_text()
    assert tap == target


def count_exchanges(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the requests sent over a wire (one-item list)."""
    sent = [0]
    real = wire.Wire.exchange

    def exchange(self: wire.Wire, *args: Any) -> Any:
        sent[0] += 1
        return real(self, *args)

    monkeypatch.setattr(wire.Wire, "exchange", exchange)
    return sent


def test_a_sync_over_wires_writes_what_a_sync_over_urllib3_writes(
    sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every stream, every line (but the moment of each run) the same either way."""
    config = tap_config(sandbox, max_concurrency=1)
    sent = count_exchanges(monkeypatch)
    ours = without_sync_times(lines(run_tap(config)))
    assert sent[0] > 100, "the wires were not used"

    def urllib3_only(  # noqa: PLR0917 - requests' signature
        self: WireAdapter,
        request: Any,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> Any:
        return self._send_urllib3(request, stream, timeout, verify, cert, proxies)

    monkeypatch.setattr(WireAdapter, "send", urllib3_only)
    sent[0] = 0
    theirs = without_sync_times(lines(run_tap(config)))
    assert sent[0] == 0
    assert sum(m["type"] == "RECORD" for m in ours) > 1000
    assert ours == theirs


def test_a_connection_the_server_closed_is_replaced(sandbox: Any) -> None:
    """A keep-alive connection that died while idle costs nothing but a new one."""
    adapter = WireAdapter()
    session = requests.Session()
    session.mount("http://", adapter)
    url = f"{sandbox.url}/taxes"
    headers = {"Authorization": f"Bearer {sandbox.api_key}"}
    first = session.get(url, headers=headers, timeout=10)
    (idle,) = [wires for wires in adapter._idle.values() if wires]
    assert idle[0].sock is not None
    idle[0].sock.close()  # as if the server had closed it
    second = session.get(url, headers=headers, timeout=10)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert second.reason == "OK" and second.headers["content-type"].startswith("application/json")


def test_a_proxy_is_never_bypassed(sandbox: Any) -> None:
    """With a proxy for the URL, the request goes requests' way, to the proxy."""
    session = requests.Session()
    session.mount("http://", WireAdapter())
    proxies = {"http": "http://127.0.0.1:9"}  # nothing listens there
    with pytest.raises(requests.exceptions.ProxyError):
        session.get(f"{sandbox.url}/taxes", proxies=proxies, timeout=5)


def test_a_gateway_that_compresses_anyway_is_read(sandbox: Any) -> None:
    """A gateway may gzip what was asked for uncompressed: the records are the same."""
    upstream = sandbox.base_url

    class Gzipping(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            answer = requests.get(
                upstream + self.path,
                headers={"Authorization": self.headers.get("Authorization", "")},
                timeout=10,
            )
            body = gzip.compress(answer.content)
            self.send_response(answer.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gzipping)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api/v1"
        direct = run_tap(tap_config(sandbox), streams={"taxes"}).records["taxes"]
        through = run_tap(tap_config(sandbox, api_url=url), streams={"taxes"}).records["taxes"]
    finally:
        server.shutdown()
        server.server_close()
    assert direct
    assert through == direct


def test_each_attempt_is_one_request(sandbox_factory: Any) -> None:
    """A dropped connection is the SDK's to retry: max_retries 2 sends 3 requests in all."""
    sb = sandbox_factory(seed={"customers": 1, "events": 0})
    sb.set_faults([{"fault": "drop", "method": "GET", "path": "/api/v1/taxes"}])
    sb.requests(clear=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        run_tap(tap_config(sb, max_retries=2), streams={"taxes"})
    sent = [r for r in sb.requests(clear=True) if r["path"] == "/api/v1/taxes"]
    assert len(sent) == 3
