# The engine and the examples, for docker-compose.yml.
FROM python:3.12-slim
RUN pip install --no-cache-dir uv
WORKDIR /app
COPY . .
RUN uv sync --locked --no-dev
ENV PATH="/app/.venv/bin:$PATH"
EXPOSE 7077
CMD ["taskyard", "engine", "--host", "0.0.0.0", "--data-dir", "/data"]
