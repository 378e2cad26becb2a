"""In-process datagram links: how one stage hands datagrams to the stage below it by function call.

A lower stage that carries datagrams (a udp2raw client, a relay's outgoing side) offers
`open_flow(receive)`: a `Flow` whose `send(data)` puts one datagram on the link and whose replies
arrive as `receive(data)`. A server-side lower stage (a udp2raw server) has no one to call first;
it offers each new flow to the stages riding it (`FlowAcceptor.claim`) with the flow's first
datagram, and the first stage that recognises it (its crypto authenticates) takes the flow.
"""

from collections.abc import Callable
from typing import Protocol

Receiver = Callable[[bytes], None]


class Flow(Protocol):
    """One flow of datagrams on a link: `send` to the peer; replies go to the receiver it was opened with."""

    def send(self, data: bytes | memoryview) -> None: ...

    def close(self) -> None: ...


class FlowOpener(Protocol):
    """A client-side datagram link (a u2r-client): opens flows for the stages riding it."""

    def open_flow(self, receive: Receiver) -> Flow: ...


class FlowHandler(Protocol):
    """What a stage keeps for one flow it took on a server-side link."""

    def receive(self, data: bytes) -> None: ...

    def close(self) -> None:
        """The flow ended on the link (its peer went away or the link stopped)."""
        ...


class FlowAcceptor(Protocol):
    """A stage riding a server-side link: takes the flows whose first datagram it recognises."""

    def claim(self, first: bytes, reply: Receiver) -> FlowHandler | None:
        """The handler for this flow (it is then given `first` too), or None if the flow is not ours.

        `reply(data)` sends a datagram back on the flow.
        """
        ...
