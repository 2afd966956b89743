# One image for every IoTFleet process: web (the default command), worker, beat and ingest
# choose their command in docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Requirements first, so code changes do not reinstall them. Every requirement ships a wheel
# (psycopg[binary] included), so no compiler is needed.
COPY requirements.txt ./
RUN pip install -r requirements.txt

RUN groupadd --system iotfleet \
    && useradd --system --gid iotfleet --home-dir /app --no-create-home --shell /usr/sbin/nologin iotfleet

COPY . .

# Static files are collected at build time with the production storage (hashed names, compressed).
# The key below only lets the settings load during the build; nothing is signed with it, and the
# running containers must be given their own SECRET_KEY.
RUN IOTFLEET_ENV=production \
    SECRET_KEY=build-time-only-collectstatic-not-a-secret \
    ALLOWED_HOSTS=localhost \
    python manage.py collectstatic --noinput \
    && mkdir -p /app/media \
    && chown iotfleet:iotfleet /app/media

# The code stays root-owned and read-only for the process; only media is writable.
USER iotfleet

EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "iotfleet.asgi:application"]
