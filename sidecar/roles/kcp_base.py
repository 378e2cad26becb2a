"""What kcp-client and kcp-server share: the crypt, the sessions (links) and their counters.

Not a subclass of the Shadowsocks Role: that one is built around ss keys (timeout, mode, NAT); a
KCP role has UDP sessions carrying many streams instead.
"""

import logging
from collections.abc import Callable

from gevent.hub import get_hub

from sidecar.config_kcp import KcpClientConfig, KcpServerConfig
from sidecar.metrics import Counters
from sidecar.net.kcp_link import LINK_COUNTERS, KcpLink, Sender
from sidecar.proto.kcp_crypt import KcpCrypt
from sidecar.proto.kcp_pipeline import KcpPipeline

# connections/active/rejected_limit/errors: TCP connections (client) or target dials (server).
COUNTERS = ("connections", "active", "rejected_limit", "errors", "connect_failures", *LINK_COUNTERS)
MAX_CONNECTIONS = 4096  # kcptun has no limit; this only bounds a runaway


class KcpRole:
    """A configured kcptun role: `bind()` takes its port, `start()` serves, `drain()` ends it."""

    def __init__(self, config: KcpClientConfig | KcpServerConfig) -> None:
        self.config = config
        self.counters = Counters(COUNTERS)
        self.log = logging.getLogger(f"sidecar.{config.name}")
        self.crypt = KcpCrypt(config.crypt, config.key)
        self.links: set[KcpLink] = set()

    def describe(self) -> str:
        raise NotImplementedError

    def options(self) -> str:
        s = self.config.settings
        fec = f"FEC {s.datashard}/{s.parityshard}" if s.fec else "no FEC"
        comp = "no compression" if s.nocomp else "snappy"
        return (f"crypt {self.config.crypt}, {fec}, {comp}, smux v{s.smuxver}, mtu {s.mtu}, "
                f"wnd {s.sndwnd}/{s.rcvwnd}, interval {s.interval} ms")

    def new_link(self, conv: int, send: Sender, *, client: bool,
                 on_stream: Callable[[KcpLink, int], None] | None = None) -> KcpLink:
        pipeline = KcpPipeline(conv, self.config.settings, self.crypt, client=client, now=get_hub().loop.now())
        link = KcpLink(pipeline, send, self.counters, self.log, upstream=client, on_stream=on_stream,
                       on_closed=self._link_closed)
        self.links.add(link)
        return link

    def _link_closed(self, link: KcpLink) -> None:
        self.links.discard(link)
        self.link_closed(link)

    def link_closed(self, link: KcpLink) -> None:
        """Hook: release what the role keeps for `link` (its socket, its table entry)."""

    def gauges(self) -> dict[str, float]:
        """Levels for `sidecar status`: open sessions, mean smoothed RTT, resent share of recent segments."""
        live = [link for link in self.links if not link.closed]
        if not live:
            return {"sessions_open": 0}
        return {"sessions_open": len(live),
                "rtt_ms": round(sum(link.pipeline.kcp.srtt for link in live) / len(live), 1),
                "loss_pct": round(100 * sum(link.loss for link in live) / len(live), 2)}

    def close_links(self) -> None:
        for link in list(self.links):
            link.close("shutting down")

    def start(self) -> None:
        logging.getLogger("sidecar").info("started %s", self.describe())
