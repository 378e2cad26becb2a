"""sidecar: one gevent daemon that plays Shadowsocks, kcptun and udp2raw roles."""

__version__ = "0.1.0"
