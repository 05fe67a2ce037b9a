FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv/ivy

RUN useradd --create-home --uid 10001 ivy
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --disable-pip-version-check . && mkdir -p logs && chown -R ivy:ivy /srv/ivy

USER ivy
ENV IVY_LOG_FILE=/srv/ivy/logs/ai_router.log
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"
CMD ["python", "-m", "uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
