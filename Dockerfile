# One image for the three services; docker compose picks the service with `command`.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HTTP_HOST=0.0.0.0
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt setuptools==84.2.1
COPY shared ./shared
COPY clients/python ./clients/python
COPY dev ./dev
COPY services ./services
COPY polar_emulator ./polar_emulator
COPY ops ./ops
COPY pyproject.toml .
# The project as a package: every service importable, and the operator's `polar-billing` on PATH.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && rm -rf build *.egg-info
RUN useradd --system --uid 10001 app
USER app
CMD ["python", "-m", "ingress"]
