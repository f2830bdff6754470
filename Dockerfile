# userli-postfix-adapter: install into a virtual environment, copy that into a slim runtime image.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY adapter ./adapter
# The adapter and its dependencies (prebuilt wheels) in one self-contained tree. Only this tree
# reaches the runtime image: no wheels, no build files, no pip cache.
RUN python -m venv /opt/adapter \
    && /opt/adapter/bin/pip install --no-cache-dir . \
    && /opt/adapter/bin/pip uninstall --yes pip

FROM python:3.11-slim-bookworm
# A fixed, unprivileged UID and a group of the same number, both named: Kubernetes' runAsUser,
# runAsGroup and fsGroup, and file permissions, can rely on them.
RUN groupadd --system --gid 10001 adapter \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin adapter
COPY --from=build /opt/adapter /opt/adapter
ENV PATH=/opt/adapter/bin:$PATH
USER 10001:10001
# socketmap, metrics/health, policy, SASL (the SASL server is off unless SASL_LISTEN_ADDR is set)
EXPOSE 10001 10002 10003 10004
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "adapter.healthcheck"]
ENTRYPOINT ["userli-postfix-adapter"]
