"""One keep-alive HTTP/1.1 connection: a request written at once, its answer read by length.

`http.client` spends about 0.5 ms of CPU per events batch, most of it parsing headers
with the `email` package; a run sends thousands of batches. `Wire` sends the same
request line and headers as `http.client.HTTPConnection` (Host, Accept-Encoding:
identity, the caller's headers, Content-Length) in one write, and reads the status line,
the headers (names lowercased, the first of repeated ones kept) and a body framed by
Content-Length, chunked transfer coding, or the end of the connection.

Errors are those of `http.client`: `OSError` for the socket (refused, reset, timeout,
TLS), `http.client.HTTPException` for an answer that is not HTTP or ends early, and
`http.client.InvalidURL` for a path with spaces or control characters.
"""

from __future__ import annotations

import http.client
import io
import re
import select
import socket
import ssl

#: Most header lines read in one answer (as `http.client`).
MAX_HEADERS = 100
#: Longest status or header line read (as `http.client`).
MAX_LINE = 65536
#: Most bytes of a body read at once (a length announced by the server is not trusted).
CHUNK = 1 << 20
#: Methods that send `Content-Length: 0` without a body (as `http.client`).
_EXPECTING_BODY = frozenset({"PATCH", "POST", "PUT"})
_BAD_PATH = re.compile(r"[\x00-\x20\x7f]")


class Headers(dict[str, str]):
    """An answer's headers by lowercased name; `get` takes any case."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        """The header's value, or `default`."""
        return dict.get(self, key.lower(), default)


class Answer:
    """A complete answer: status, headers, body, and whether the server closes."""

    __slots__ = ("content", "headers", "status", "will_close")

    def __init__(self, status: int, headers: Headers, content: bytes, will_close: bool) -> None:
        self.status = status
        self.headers = headers
        self.content = content
        self.will_close = will_close


class Wire:
    """One connection to a host, opened on its first request; one request at a time."""

    def __init__(
        self,
        host: str,
        port: int | None,
        *,
        timeout: float | None,
        context: ssl.SSLContext | None = None,
        head: bytes = b"",
    ) -> None:
        """Prepare the connection (nothing is opened yet).

        Args:
            host: Host name or address.
            port: Port (None: 443 with `context`, else 80).
            timeout: Seconds a connect, write or read may take (None: no limit).
            context: TLS context for https.
            head: The header lines every request carries after Host (CRLF-terminated).
        """
        default = 443 if context is not None else 80
        self.host = host
        self.port = port or default
        self.timeout = timeout
        self.context = context
        self.sock: socket.socket | None = None
        self._file: io.BufferedReader | None = None
        try:
            name = host.encode("ascii")
        except UnicodeEncodeError:
            name = host.encode("idna")
        if b":" in name:
            name = b"[" + name + b"]"
        if self.port != default:
            name += b":%d" % self.port
        self._head = b"Host: " + name + b"\r\nAccept-Encoding: identity\r\n" + head

    def connect(self) -> None:
        """Open the connection (TCP, then TLS for https)."""
        sock = socket.create_connection((self.host, self.port), self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._file = sock.makefile("rb")

    def still_open(self) -> bool:
        """Whether an idle keep-alive connection can take a request (nothing to read on it)."""
        sock = self.sock
        if sock is None:
            return False
        try:
            if hasattr(select, "poll"):  # no limit on descriptor numbers
                poller = select.poll()
                poller.register(sock, select.POLLIN)
                return not poller.poll(0)
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def close(self) -> None:
        """Close the connection (a later request opens a new one)."""
        file, sock = self._file, self.sock
        self._file = self.sock = None
        if file is not None:
            file.close()
        if sock is not None:
            sock.close()

    def exchange(self, method: str, target: str, body: bytes | None) -> Answer:
        """Send one request and read its whole answer.

        Raises:
            OSError: On a socket error or timeout.
            http.client.HTTPException: On an answer that is not HTTP/1.x or ends early.
        """
        if _BAD_PATH.search(target):
            raise http.client.InvalidURL(f"URL can't contain control characters: {target!r}")
        if self.sock is None:
            self.connect()
        assert self.sock is not None and self._file is not None
        line = f"{method} {target} HTTP/1.1\r\n".encode("ascii")
        if body is not None:
            length = b"Content-Length: %d\r\n\r\n" % len(body)
            self.sock.sendall(b"".join((line, self._head, length, body)))
        elif method in _EXPECTING_BODY:
            self.sock.sendall(b"".join((line, self._head, b"Content-Length: 0\r\n\r\n")))
        else:
            self.sock.sendall(b"".join((line, self._head, b"\r\n")))
        return self._answer(method)

    def _answer(self, method: str) -> Answer:
        file = self._file
        assert file is not None
        while True:
            version, status = _status(file.readline(MAX_LINE + 1))
            headers = _headers(file)
            if not 100 <= status < 200:
                break  # 1xx answers (100 Continue) precede the real one
        connection = (headers.get("connection") or "").lower()
        will_close = "close" in connection or (version == 10 and "keep-alive" not in connection)
        if method == "HEAD" or status in (204, 304):
            return Answer(status, headers, b"", will_close)
        if "chunked" in (headers.get("transfer-encoding") or "").lower():
            return Answer(status, headers, _chunked(file), will_close)
        length = headers.get("content-length")
        try:
            size = -1 if length is None else int(length)
        except ValueError:
            raise http.client.HTTPException(f"bad Content-Length {length!r}") from None
        if size < 0:  # none (or a negative one, as http.client reads it): to the end
            return Answer(status, headers, file.read(), True)
        return Answer(status, headers, _exactly(file, size), will_close)


def _status(line: bytes) -> tuple[int, int]:
    """(10 or 11, status) of a status line."""
    if not line:
        raise http.client.RemoteDisconnected("Remote end closed connection without response")
    if len(line) > MAX_LINE:
        raise http.client.LineTooLong("status line")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3:
        raise http.client.BadStatusLine(line.decode("latin-1", "replace").strip())
    try:
        status = int(parts[1])
    except ValueError:
        raise http.client.BadStatusLine(line.decode("latin-1", "replace").strip()) from None
    if not 100 <= status <= 999:
        raise http.client.BadStatusLine(line.decode("latin-1", "replace").strip())
    return (10 if parts[0] == b"HTTP/1.0" else 11), status


def _headers(file: io.BufferedReader) -> Headers:
    headers = Headers()
    for _ in range(MAX_HEADERS + 1):
        line = file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            return headers
        name, colon, value = line.partition(b":")
        if colon:
            key, text = name.strip().decode("latin-1").lower(), value.strip().decode("latin-1")
            if key == "content-length" and headers.get(key, text) != text:
                raise http.client.HTTPException("conflicting Content-Length headers")
            headers.setdefault(key, text)
    raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")


def _exactly(file: io.BufferedReader, size: int) -> bytes:
    """`size` bytes, read a chunk at a time (never more memory than what arrives)."""
    if size <= CHUNK:
        content = file.read(size) if size else b""
    else:
        parts: list[bytes] = []
        left = size
        while left:
            part = file.read(min(left, CHUNK))
            if not part:
                break
            parts.append(part)
            left -= len(part)
        content = b"".join(parts)
    if len(content) < size:
        raise http.client.IncompleteRead(content, size - len(content))
    return content


def _chunked(file: io.BufferedReader) -> bytes:
    parts: list[bytes] = []
    while True:
        line = file.readline(MAX_LINE + 1)
        try:
            size = int(line.split(b";", 1)[0], 16)
        except ValueError:
            raise http.client.IncompleteRead(b"".join(parts)) from None
        if size == 0:
            break
        chunk = file.read(size)
        if len(chunk) < size or file.read(2) != b"\r\n":
            raise http.client.IncompleteRead(b"".join(parts) + chunk)
        parts.append(chunk)
    for _ in range(MAX_HEADERS + 1):  # trailers, up to the blank line
        if file.readline(MAX_LINE + 1) in (b"\r\n", b"\n", b""):
            return b"".join(parts)
    raise http.client.HTTPException(f"got more than {MAX_HEADERS} trailers")
