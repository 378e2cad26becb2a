"""Sans-I/O protocol cores: bytes and time in, bytes and events out; no sockets, no gevent, no clocks."""
