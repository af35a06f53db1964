# One image for the three services; docker compose picks the service with `command`.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app:/app/services/ingress:/app/services/billing:/app/services/usage-sync:/app/clients/python \
    HTTP_HOST=0.0.0.0
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY shared ./shared
COPY clients/python ./clients/python
COPY dev ./dev
COPY services ./services
COPY polar_emulator ./polar_emulator
RUN useradd --system --uid 10001 app
USER app
CMD ["python", "-m", "ingress"]
