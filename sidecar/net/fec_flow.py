"""The datagram FEC stage on one flow: sidecar.proto.dgram_fec's encoder and decoder, driven in the hub.

Data leaves at once; only parity waits, for its group to fill or for the group's wait to end (one
libev timer per flow, armed only while a group is open). The decoder's loss estimate rides out on
every packet we send, and the peer's estimate of our direction sets our parity in adaptive mode.
"""

from collections.abc import Callable

from gevent.hub import get_hub

from sidecar.errors import ProtocolError
from sidecar.metrics import Counters
from sidecar.proto.dgram_fec import FecDecoder, FecEncoder, FecParams

Send = Callable[[bytes], None]
# Folded into the stage's counters when a flow closes and on every timer wake-up.
FEC_COUNTERS = ("fec_recovered", "fec_unrecovered", "fec_parity_in", "fec_duplicates", "fec_bad", "fec_parity_out")
_FOLDED = {"recovered": "fec_recovered", "unrecovered": "fec_unrecovered", "parity": "fec_parity_in",
           "duplicates": "fec_duplicates", "bad": "fec_bad"}


class FecFlow:
    """`send(payload)` frames onto `link_send`; `receive(packet)` from the link delivers to `deliver`."""

    __slots__ = ("_link_send", "_deliver", "_encoder", "_decoder", "_adaptive", "_counters", "_loop", "_timer",
                 "_folded")

    def __init__(self, params: FecParams, link_send: Send, deliver: Callable[[bytes], None],
                 counters: Counters) -> None:
        self._link_send, self._deliver, self._counters = link_send, deliver, counters
        self._encoder, self._decoder = FecEncoder(params), FecDecoder(params)
        self._adaptive = params.adaptive
        self._loop = get_hub().loop
        self._timer = None
        self._folded = dict.fromkeys(_FOLDED, 0)

    @property
    def loss(self) -> float:
        """The loss this side measures on what it receives (before recovery)."""
        return self._decoder.loss

    @property
    def parity_now(self) -> int:
        return self._encoder.parity_now

    def send(self, payload: bytes | memoryview) -> None:
        encoder = self._encoder
        encoder.feedback = self._decoder.loss
        self._emit(encoder.encode(payload, self._loop.now()))
        if self._timer is None and encoder.next_deadline() != float("inf"):
            self._arm()

    def receive(self, packet: bytes) -> None:
        """A packet from the link; ProtocolError (for the caller to count) if it is not ours."""
        payloads = self._decoder.decode(packet, self._loop.now())
        if self._adaptive:
            self._encoder.peer_loss(self._decoder.peer_feedback)
        for payload in payloads:
            self._deliver(payload)

    def _emit(self, packets: list[bytes]) -> None:
        for packet in packets:
            self._link_send(packet)
        self._counters["fec_parity_out"] += len(packets) - 1  # the first is the data packet

    def _arm(self) -> None:
        self._timer = self._loop.timer(max(0.0, self._encoder.next_deadline() - self._loop.now()))
        self._timer.start(self._on_timer)

    def _on_timer(self) -> None:
        self._timer.close()
        self._timer = None
        encoder = self._encoder
        encoder.feedback = self._decoder.loss
        parity = encoder.tick(self._loop.now())
        for packet in parity:
            self._link_send(packet)
        self._counters["fec_parity_out"] += len(parity)
        if encoder.next_deadline() != float("inf"):
            self._arm()
        self.fold()

    def fold(self) -> None:
        """Add what the decoder counted since the last fold to the stage's counters."""
        counters, decoded = self._counters, self._decoder.counters
        for attr, name in _FOLDED.items():
            value = getattr(decoded, attr)
            counters[name] += value - self._folded[attr]
            self._folded[attr] = value

    def close(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None
        self.fold()


def checked(receive: Callable[[bytes], None], counters: Counters) -> Callable[[bytes], None]:
    """`receive` with a bad packet dropped and counted (`udp_dropped`) instead of raised."""
    def guarded(packet: bytes) -> None:
        try:
            receive(packet)
        except ProtocolError:
            counters["udp_dropped"] += 1
    return guarded
