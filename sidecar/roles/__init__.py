"""Roles: each assembles its stages from config, owns its listeners, counters and logs."""

from typing import TYPE_CHECKING

from sidecar.config import RoleConfig, SsLocalConfig, SsRedirConfig, SsServerConfig, SsTunnelConfig
from sidecar.config_chain import RelayConfig
from sidecar.config_kcp import KcpClientConfig, KcpServerConfig
from sidecar.config_u2r import U2rConfig
from sidecar.roles.base import Role
from sidecar.roles.kcp_base import KcpRole
from sidecar.roles.kcp_client import KcpClient
from sidecar.roles.kcp_server import KcpServer
from sidecar.roles.relay import Relay
from sidecar.roles.ss_local import SsLocal
from sidecar.roles.ss_redir import SsRedir
from sidecar.roles.ss_server import SsServer
from sidecar.roles.ss_tunnel import SsTunnel

if TYPE_CHECKING:
    from sidecar.roles.u2r import U2rRole


def build_role(config: RoleConfig) -> "Role | KcpRole | U2rRole | Relay":
    if isinstance(config, SsLocalConfig):
        return SsLocal(config)
    if isinstance(config, SsTunnelConfig):
        return SsTunnel(config)
    if isinstance(config, SsRedirConfig):
        return SsRedir(config)
    if isinstance(config, SsServerConfig):
        return SsServer(config)
    if isinstance(config, KcpClientConfig):
        return KcpClient(config)
    if isinstance(config, KcpServerConfig):
        return KcpServer(config)
    if isinstance(config, RelayConfig):
        return Relay(config)
    if isinstance(config, U2rConfig):
        from sidecar.roles.u2r import U2rRole  # raw sockets and udp2raw crypto: loaded only when configured

        return U2rRole(config)
    raise TypeError(f"no role for {type(config).__name__}")
