# sidecar as a container for linux/amd64, linux/arm64 and linux/arm/v7 (build command: README,
# "Packaging"). The runtime libraries are Debian's own packages: they exist for every one of those
# arches, so nothing is compiled, even on arm/v7 where PyPI has no gevent wheel. Not Debian 12's
# python3-cryptography: its 38.0 rejects the bytearray/memoryview arguments sidecar passes (41+ takes
# them), so pycryptodome does the AEAD, as on a router.
#
#   docker run -d --name sidecar -v "$PWD/sidecar.toml:/etc/sidecar/sidecar.toml:ro" -p 1080:1080 sidecar
#
# The config is read from /etc/sidecar/sidecar.toml (mount it read-only, readable by uid 10001).
# Listen on 0.0.0.0 inside the container (local_address / server) to be reachable through -p.
# udp2raw roles open raw sockets and set firewall rules: run those as root with the capabilities,
# `--user 0 --cap-add NET_RAW --cap-add NET_ADMIN` (Docker grants added capabilities to root only).
ARG BASE=debian:bookworm-slim

# Wheels of sidecar itself and of cramjam (kcptun compression, not packaged by Debian), built or
# fetched for the target arch, so the final stage needs neither pip nor a compiler.
FROM ${BASE} AS wheels
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip python3-setuptools python3-wheel \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY setup.py README.md ./
COPY sidecar ./sidecar
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation -w /wheels . \
 && pip download --no-cache-dir --no-deps --only-binary=:all: -d /wheels "cramjam>=2.6"

FROM ${BASE}
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-gevent python3-pycryptodome python3-msgpack \
      python3-crc32c python3-installer \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sidecar \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin sidecar
RUN --mount=type=bind,from=wheels,source=/wheels,target=/tmp/wheels \
    for wheel in /tmp/wheels/*.whl; do python3 -m installer "$wheel" || exit 1; done
USER 10001:10001
EXPOSE 1080
ENTRYPOINT ["sidecar"]
CMD ["run", "-c", "/etc/sidecar/sidecar.toml"]
