"""The typed errors of each layer; drivers catch them per connection, count them and carry on."""


class SidecarError(Exception):
    """Base of every error sidecar raises on purpose."""


class ProtocolError(SidecarError):
    """Malformed bytes from a peer: the connection or packet is dropped."""


class AuthError(ProtocolError):
    """Bytes that fail authentication (wrong key, tampered, replayed)."""


class ConfigError(SidecarError):
    """A bad configuration value; the message names the key, the value and the fix."""

    def __init__(self, key: str, value: object, fix: str) -> None:
        self.key, self.value, self.fix = key, value, fix
        super().__init__(f"config: {key} = {value!r}: {fix}")
