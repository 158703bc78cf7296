# syntax=docker/dockerfile:1
# The engine and the examples, for docker-compose.yml.
FROM python:3.12-slim
RUN pip install --no-cache-dir uv
WORKDIR /app
ENV UV_LINK_MODE=copy
# Dependencies first, from the lock alone: a change to the code reuses this layer instead of
# installing every dependency again. (The workspace's own packages come in the next step.)
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-workspace
COPY . .
RUN --mount=type=cache,target=/root/.cache/uv uv sync --locked --no-dev
ENV PATH="/app/.venv/bin:$PATH"
EXPOSE 7077
CMD ["taskyard", "engine", "--host", "0.0.0.0", "--data-dir", "/data", "--plugin", "http", "--plugin", "email"]
