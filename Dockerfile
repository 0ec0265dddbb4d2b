# keygate: multi-stage build → small, non-root runtime image.
#   docker build -t keygate .
#   docker run -p 8787:8787 -e KEYGATE_TOKEN=... -e ANTHROPIC_API_KEYS=... keygate
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin keygate && strip target/release/keygate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/keygate --create-home keygate
COPY --from=build /src/target/release/keygate /usr/local/bin/keygate
COPY config/keygate.toml /etc/keygate/keygate.toml
USER 10001:10001
ENV KEYGATE_LISTEN=0.0.0.0:8787 \
    KEYGATE_STATE_DIR=/var/lib/keygate \
    KEYGATE_CONFIG=/etc/keygate/keygate.toml
EXPOSE 8787
# Token auth is on: keygate refuses to listen on 0.0.0.0 unless KEYGATE_TOKEN (or
# gateway.auth.tokens) is set.
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8787/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["serve"]
