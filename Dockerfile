# userli-postfix-adapter: build a wheel, install it into a slim runtime image.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY adapter ./adapter
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# A fixed, unprivileged UID: Kubernetes' runAsUser and file permissions can rely on it.
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin adapter
COPY --from=build /wheels /wheels
# Exactly the wheels built above (the adapter and its dependencies); no index, no compiler.
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
    && rm -rf /wheels
USER 10001:10001
# socketmap, metrics/health, policy, SASL (the SASL server is off unless SASL_LISTEN_ADDR is set)
EXPOSE 10001 10002 10003 10004
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "adapter.healthcheck"]
ENTRYPOINT ["userli-postfix-adapter"]
