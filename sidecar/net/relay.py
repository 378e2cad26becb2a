"""Pump bytes both ways between two sockets, through optional transforms, with an idle timeout.

Each direction ends at its EOF with a half-close of the other socket (so request/response
protocols that shut down writing still get their answer); the pair ends when both have, when
either side fails, or when neither moved a byte for `timeout_s`.
"""

import contextlib
import time
from collections.abc import Callable

import gevent
from gevent import socket

from sidecar.metrics import Counters

Transform = Callable[[bytes], bytes]
RECV_SIZE = 65536


class IdleTimeout(Exception):
    """Neither direction moved a byte for the whole timeout."""


class _Activity:
    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = time.monotonic()


def _pump(src: socket.socket, dst: socket.socket, transform: Transform | None, activity: _Activity,
          timeout_s: float, counters: Counters, counter: str) -> None:
    recv, sendall = src.recv, dst.sendall
    while True:
        try:
            data = recv(RECV_SIZE)
        except TimeoutError:
            if time.monotonic() - activity.last >= timeout_s:
                raise IdleTimeout from None
            continue
        if not data:
            break
        activity.last = time.monotonic()
        counters[counter] += len(data)
        if transform is not None:
            data = transform(data)
        if data:
            sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _abort(*socks: socket.socket) -> None:
    """Wake every greenlet blocked on these sockets (their reads see EOF) without closing them."""
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def relay(a: socket.socket, b: socket.socket, a_to_b: Transform | None, b_to_a: Transform | None,
          timeout_s: float, counters: Counters) -> None:
    """Relay until both directions end; raises what ended it early (IdleTimeout, OSError, ProtocolError).

    `counters` must have `bytes_up` (read from a) and `bytes_down` (read from b).
    """
    activity = _Activity()
    a.settimeout(timeout_s)
    b.settimeout(timeout_s)
    back = gevent.spawn(_pump, b, a, b_to_a, activity, timeout_s, counters, "bytes_down")
    back.link_exception(lambda _: _abort(a, b))
    try:
        _pump(a, b, a_to_b, activity, timeout_s, counters, "bytes_up")
        back.join()
    except BaseException:
        _abort(a, b)
        raise
    finally:
        back.kill(block=True)
    if back.exception is not None:
        raise back.exception
