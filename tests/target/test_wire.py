"""The target's HTTP/1.1 connection (`wire.Wire`) against a server that answers scripted bytes.

Each answer is written as given, so the framings `http.client` reads (Content-Length,
chunked, to the end of the connection), a 100 Continue, header names in any case, and
answers cut short are read the way the client's retries and 429 handling rely on.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from target_lago.client import LagoClient

Script = list[tuple[bytes, bool]]  # (answer bytes, close the connection after it)


class ScriptedServer:
    """Reads each request whole, records it, then writes the next scripted answer."""

    def __init__(self, script: Script) -> None:
        self.script = list(script)
        self.requests: list[bytes] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while self.script:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn, conn.makefile("rb") as reader:
                while self.script:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = reader.readline()
                        if not line:
                            break
                        head += line
                    if not head:
                        break
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    self.requests.append(head + reader.read(length))
                    answer, close = self.script.pop(0)
                    conn.sendall(answer)
                    if close:
                        break

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


@pytest.fixture
def serve() -> Iterator[list[ScriptedServer]]:
    servers: list[ScriptedServer] = []
    yield servers
    for server in servers:
        server.close()


def _client(server: ScriptedServer, retries: int = 0) -> LagoClient:
    client = LagoClient(server.url(), "wire-key", timeout=5, max_retries=retries)
    client.backoff_base = 0.0
    return client


def test_each_framing_is_read_whole_and_the_connection_kept_while_it_may_be(
    serve: list[ScriptedServer],
) -> None:
    server = ScriptedServer(
        [
            (b'HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{"events":[]}', False),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
                b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n3;x=y\r\n 1}\r\n0\r\n\r\n',
                False,
            ),
            (b"HTTP/1.1 204 No Content\r\nCONNECTION: close\r\n\r\n", True),
            (b'HTTP/1.0 200 OK\r\n\r\n{"b": 2}', True),
        ]
    )
    serve.append(server)
    client = _client(server)
    assert client.post("/events/batch", b'{"events":[]}').content == b'{"events":[]}'
    assert client.get("/customers", {"page": "1"}).body == {"a": 1}
    assert client.request("DELETE", "/customers/c1", None).status == 204
    assert client.get("/events").body == {"b": 2}
    client.stop()
    assert server.connections == 2  # kept alive until the 204 said close
    post, get, delete, last = server.requests
    assert post.startswith(b"POST /api/v1/events/batch HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAccept-Encoding: identity\r\n" in post
    assert b"\r\nAuthorization: Bearer wire-key\r\n" in post
    assert post.endswith(b'\r\nContent-Length: 13\r\n\r\n{"events":[]}')
    assert get.startswith(b"GET /api/v1/customers?page=1 HTTP/1.1\r\n")
    assert b"Content-Length" not in get and b"Content-Length" not in delete
    assert last.startswith(b"GET /api/v1/events HTTP/1.1\r\n")


def test_an_answer_cut_short_is_retried_and_a_429_reads_its_reset_in_any_case(
    serve: list[ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    server = ScriptedServer(
        [
            (b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"par', True),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{}", True),
            (b"garbage\r\n\r\n", True),
            (
                b"HTTP/1.1 429 Too Many Requests\r\nx-ratelimit-reset: 7\r\n"
                b"Content-Length: 0\r\n\r\n",
                False,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", False),
        ]
    )
    serve.append(server)
    client = _client(server, retries=4)
    monkeypatch.setattr(client, "_sleep", waits.append)
    response = client.post("/events/batch", b"{}")
    assert response.ok and response.replayed  # the lost answers may have been applied
    assert len(server.requests) == 5
    assert len(waits) == 4 and 6.9 <= waits[-1] <= 7.1  # the 429's reset, as announced
    client.stop()


def test_a_server_that_closes_without_answering_is_no_response(
    serve: list[ScriptedServer],
) -> None:
    server = ScriptedServer([(b"", True)])
    serve.append(server)
    client = _client(server)
    with pytest.raises(
        Exception,
        match=r"still failing after 0 retries \(last: "
        r"RemoteDisconnected \(no response\)\)",
    ):
        client.post("/events/batch", b"{}")
    client.stop()


def test_a_length_the_server_gets_wrong_is_read_safely(serve: list[ScriptedServer]) -> None:
    """A negative length reads to the end (as http.client does), two different lengths are
    no answer, and a huge one cut short is no answer, without reserving its size."""
    server = ScriptedServer(
        [
            (b'HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{"a": 1}', True),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", True),
            (b'HTTP/1.1 200 OK\r\nContent-Length: 99999999999999\r\n\r\n{"b"', True),
        ]
    )
    serve.append(server)
    client = _client(server)
    assert client.get("/events").body == {"a": 1}
    for _ in range(2):
        with pytest.raises(Exception, match=r"still failing after 0 retries"):
            client.get("/events")
    assert len(server.requests) == 3
    client.stop()
