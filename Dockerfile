FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv/ivy

# curl and jq: the runbook's checks run inside the container as written (RUNBOOK.md "Where each
# command runs"); grep, tail, cut and ls come with the base image.
RUN apt-get update && apt-get install -y --no-install-recommends curl jq \
  && rm -rf /var/lib/apt/lists/* && useradd --create-home --uid 10001 ivy
COPY pyproject.toml README.md RUNBOOK.md ./
COPY app ./app
# The runbook's manual eval (`cd scripts && python eval_nightly.py`) and its cases; nothing else of scripts/.
COPY scripts/eval_nightly.py ./scripts/
COPY scripts/eval_data ./scripts/eval_data
RUN pip install --disable-pip-version-check . && mkdir -p logs scripts/eval_reports && chown -R ivy:ivy /srv/ivy

USER ivy
ENV IVY_LOG_FILE=/srv/ivy/logs/ai_router.log
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS -o /dev/null http://127.0.0.1:8000/health || exit 1
CMD ["python", "-m", "uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
