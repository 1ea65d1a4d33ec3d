# Engine image: the `durable` CLI (control plane and worker) plus the example handlers.
# The same image runs both roles; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies and package first, so edits to examples/ do not reinstall everything.
COPY sdk ./sdk
COPY server ./server
RUN pip install './sdk[worker]' ./server

# Handler modules for `durable worker --module examples.hello` (not part of the package).
COPY examples ./examples
ENV PYTHONPATH=/app

RUN useradd --create-home --uid 10001 durable
USER durable

EXPOSE 50051
# Beyond loopback the control plane wants TLS and keys (README, Security); this default
# command is for a private network and says so.
CMD ["durable", "server", "--nats", "nats://n1:4222,nats://n2:4222,nats://n3:4222", "--listen", "0.0.0.0:50051", "--insecure"]
