# The ingress gateway: `sandgate ingress`, a stable URL for every sandbox
# port. It needs no capability and runs as an unprivileged user.
#
#   docker build -f docker/ingress.Dockerfile -t sandgate-ingress .
#
# The build stage is the egress image's, line for line: the README's
# scripts/install-deps.sh --build-only, then CMake.

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
RUN cmake -S . -B build -DSANDGATE_TESTS=OFF -DSANDGATE_DATA_DIR=/usr/share/sandgate \
 && cmake --build build -j"$(nproc)" \
 && DESTDIR=/out cmake --install build --prefix /usr

FROM debian:bookworm-slim
# One binary for every plane: it links libnftnl and libmnl even when it only
# routes HTTP.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libluajit-5.1-2 libuv1 libc-ares2 libnftnl11 libmnl0 lua-cjson libssl3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/usr/ /usr/
ENV SANDGATE_HOME=/usr/share/sandgate
USER 65532:65532
# The gateway; the admin API (/metrics, /reload) stays on 127.0.0.1:28889
# unless --admin-addr says otherwise.
EXPOSE 28888/tcp
ENTRYPOINT ["sandgate", "ingress"]
