# One image for every app process: the API (default CMD), the worker (`python worker.py`)
# and the one-shot migration (`alembic upgrade head`).  See docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The whole project: pyproject.toml (packages.find include list + the top-level worker.py
# module) and the files run from the working directory (alembic.ini, worker.py).
COPY . .
# PYTHONDONTWRITEBYTECODE only stops *writing* .pyc files: compile them here, once, so no process
# compiles the project's source at start (the worker imports workflows/ and core/ from /app).
RUN pip install --no-cache-dir . \
    && python -m compileall -q /app \
    && useradd --create-home --uid 10001 app \
    && mkdir -p /app/data \
    && chown app:app /app/data

USER app

EXPOSE 8000
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]
