FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 STATIC_ROOT=/app/static
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN DEBUG=false SECRET_KEY=build-only python manage.py collectstatic --noinput
RUN useradd --system iotcloud && mkdir -p /app/var && chown iotcloud /app/var
USER iotcloud
EXPOSE 8000
CMD ["gunicorn", "iotcloud.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "5"]
