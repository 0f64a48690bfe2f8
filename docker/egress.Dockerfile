# The egress sidecar: `sandgate egress` in the sandbox's network namespace.
# It needs CAP_NET_ADMIN (nftables, SO_MARK) and runs as root so that the
# capability is effective; the sandboxed program runs as another user in its
# own container.
#
# The same image also carries the in-sandbox port proxy,
# `sandgate portproxy --port 44772`, run as a second container in the same
# network namespace (see compose.yaml); it needs no capability.
#
#   docker build -f docker/egress.Dockerfile -t sandgate-egress .
#
# The build stage installs the build dependencies and builds exactly as the
# README does (scripts/install-deps.sh --build-only, then CMake), so the image
# cannot drift from what the tests exercise.

FROM debian:bookworm-slim AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh --build-only && rm -rf /var/lib/apt/lists/*
COPY CMakeLists.txt ./
COPY cmake/ cmake/
COPY core/ core/
COPY lua/ lua/
COPY policies/ policies/
COPY examples/ examples/
# -DSANDGATE_DATA_DIR is only the fallback compiled into the binary;
# SANDGATE_HOME below says the same at run time.
RUN cmake -S . -B build -DSANDGATE_TESTS=OFF -DSANDGATE_DATA_DIR=/usr/share/sandgate \
 && cmake --build build -j"$(nproc)" \
 && DESTDIR=/out cmake --install build --prefix /usr

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libluajit-5.1-2 libuv1 libc-ares2 libnftnl11 libmnl0 lua-cjson libssl3 \
 && rm -rf /var/lib/apt/lists/*
# /usr/bin/sandgate and /usr/share/sandgate/{lua,policies,examples}.
COPY --from=build /out/usr/ /usr/
ENV SANDGATE_HOME=/usr/share/sandgate
# The always-lists' default directory; mount deny.always / allow.always here.
RUN mkdir -p /var/egress/rules
# DNS proxy (127.0.0.1 and ::1 only), the policy API, the port proxy.
EXPOSE 15353/udp 15353/tcp 18080/tcp 44772/tcp
ENTRYPOINT ["sandgate", "egress"]
