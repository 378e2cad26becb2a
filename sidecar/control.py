"""The local control socket: msgpack requests and answers over a Unix stream socket.

`sidecar status` asks a running process for its roles' counters here. One request per connection:
the client sends a msgpack map `{"cmd": NAME, ...}` and reads one msgpack map back. The socket is
created mode 0600 (owner only) and removed on stop; a stale file from a dead process is replaced.
"""

import contextlib
import logging
import os
import socket as _socket
from collections.abc import Callable
from typing import Any

import gevent
import msgpack
from gevent import socket

Handler = Callable[[dict[str, Any]], dict[str, Any]]
MAX_REQUEST = 64 * 1024


def default_path() -> str:
    """/run/sidecar.sock for root; else $XDG_RUNTIME_DIR/sidecar.sock, or /tmp/sidecar-UID.sock."""
    if os.geteuid() == 0 and os.access("/run", os.W_OK):
        return "/run/sidecar.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "sidecar.sock") if runtime else f"/tmp/sidecar-{os.geteuid()}.sock"


class ControlServer:
    """Serves `handlers[cmd](request)` on a Unix socket until `stop()`."""

    def __init__(self, path: str, handlers: dict[str, Handler], log: logging.Logger) -> None:
        self.path = path
        self._handlers = handlers
        self._log = log
        self._listener: socket.socket | None = None
        self._acceptor: gevent.Greenlet | None = None

    def start(self) -> None:
        _remove_stale(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(self.path)
        finally:
            os.umask(old_umask)
        listener.listen(16)
        self._listener = listener
        self._acceptor = gevent.spawn(self._accept_loop)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            gevent.spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                request = _read_message(conn)
                conn.sendall(msgpack.packb(self._answer(request)))
            except (OSError, ValueError) as exc:
                self._log.debug("control request failed: %s", exc)

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        handler = self._handlers.get(str(request.get("cmd")))
        if handler is None:
            return {"error": f"unknown command {request.get('cmd')!r}; known: {', '.join(sorted(self._handlers))}"}
        return handler(request)

    def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.kill(block=False)
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _read_message(conn: Any) -> dict[str, Any]:
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_REQUEST)
    while True:
        data = conn.recv(4096)
        if not data:
            raise ValueError("connection closed before a whole message")
        unpacker.feed(data)
        for message in unpacker:
            if not isinstance(message, dict):
                raise ValueError("a control message must be a map")
            return message


class SocketInUse(OSError):
    """Another live sidecar serves this control socket."""


def _remove_stale(path: str) -> None:
    """Remove a socket file nobody answers on; refuse to take over one that a live process serves."""
    if not os.path.exists(path):
        return
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise SocketInUse(f"another sidecar is serving the control socket {path}")


def request(path: str, cmd: str, timeout_s: float = 5.0, **args: Any) -> dict[str, Any]:
    """Ask the process behind `path`; raises OSError if none answers."""
    with _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(path)
        sock.sendall(msgpack.packb({"cmd": cmd, **args}))
        return _read_message(sock)
