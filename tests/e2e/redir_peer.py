"""Helper processes for the ss-redir test, run inside a namespace with `ip netns exec`.

    target TCP_ADDR UDP_ADDR SECOND_ADDR   echo servers; print each TCP peer; every UDP datagram is also
                                           answered from SECOND_ADDR (a second remote, for full cone)
    client TCP_ADDR UDP_ADDR SIZE          one TCP echo of SIZE random bytes and one UDP exchange;
                                           prints a JSON report
    tcp TCP_ADDR                           one short TCP echo; prints ok
"""

import hashlib
import json
import os
import socket
import sys
import threading


def _addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


def _udp(address: tuple[str, int]) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_DGRAM)


def target(tcp: str, udp: str, second: str) -> None:
    address = _addr(tcp)
    listener = socket.create_server(address, family=socket.AF_INET6 if ":" in address[0] else socket.AF_INET,
                                    dualstack_ipv6=address[0] == "::")
    echo = _udp(_addr(udp))
    echo.bind(_addr(udp))
    other = _udp(_addr(second))
    other.bind(_addr(second))
    threading.Thread(target=_udp_loop, args=(echo, other), daemon=True).start()
    print("ready", flush=True)
    while True:
        conn, peer = listener.accept()
        print(f"tcp-peer {peer[0].removeprefix('::ffff:')}", flush=True)
        threading.Thread(target=_tcp_echo, args=(conn,), daemon=True).start()


def _udp_loop(echo: socket.socket, other: socket.socket) -> None:
    while True:
        data, peer = echo.recvfrom(65536)
        print(f"udp-peer {peer[0].removeprefix('::ffff:')}", flush=True)
        echo.sendto(data, peer)
        other.sendto(b"second:" + data, peer)


def _tcp_echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def tcp_once(tcp: str) -> None:
    with socket.create_connection(_addr(tcp), timeout=20) as sock:
        sock.sendall(b"ping")
        print("ok" if sock.recv(4) == b"ping" else "bad", flush=True)


def client(tcp: str, udp: str, size: int) -> None:
    data = os.urandom(size)
    with socket.create_connection(_addr(tcp), timeout=20) as sock:
        threading.Thread(target=sock.sendall, args=(data,), daemon=True).start()
        digest, got = hashlib.sha256(), 0
        while got < size:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            got += len(chunk)
    report = {"tcp_ok": digest.hexdigest() == hashlib.sha256(data).hexdigest(), "udp": []}
    with _udp(_addr(udp)) as sock:
        sock.settimeout(5)
        sock.sendto(b"game-packet", _addr(udp))
        for _ in range(2):
            try:
                payload, source = sock.recvfrom(65536)
            except TimeoutError:
                break
            host = f"[{source[0]}]" if ":" in source[0] else source[0]
            report["udp"].append([payload.decode(), f"{host}:{source[1]}"])
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    commands = {"target": lambda a: target(*a), "client": lambda a: client(a[0], a[1], int(a[2])),
                "tcp": lambda a: tcp_once(a[0])}
    commands[sys.argv[1]](sys.argv[2:])
