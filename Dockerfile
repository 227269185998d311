# The iotcloud image: API (gunicorn), operator UI (daphne), MQTT bridge and migrations all run from it
# (docker-compose.yml picks the command). No secret is baked in: configuration comes from the environment.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 STATIC_ROOT=/app/static
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# Hashed, compressed static files for whitenoise. The values below exist only for this build step.
RUN DEBUG=false SECRET_KEY=build-only-not-a-secret ALLOWED_HOSTS=build.invalid METRICS_PUBLIC=true \
    python manage.py collectstatic --noinput --verbosity 0
# Run as an unprivileged user with a fixed uid (for volumes); the code stays read-only to it.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin iotcloud \
    && mkdir -p /app/var /device-ca && chown iotcloud /app/var /device-ca
USER iotcloud
EXPOSE 8000 8080
# Health checks are per service in docker-compose.yml (python + urllib, no curl needed):
# GET /healthz on 8000 (gunicorn) or 8080 (daphne). Neither port is for clients: gunicorn's sync
# workers go behind a buffering reverse proxy (compose's nginx, iotcloud/deploy/nginx.conf.template).
CMD ["sh", "-c", "exec gunicorn iotcloud.wsgi:application --bind 0.0.0.0:8000 --workers \"${WEB_WORKERS:-5}\""]
