FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN useradd --create-home taskplatform \
 && mkdir -p /var/lib/taskplatform/audit-overflow && chown -R taskplatform /var/lib/taskplatform
USER taskplatform
# JSON logs for a log shipper; /metrics and /health of each worker on 9091; Flower on 5555.
ENV PYTHONUNBUFFERED=1 TASKPLATFORM_LOG_FORMAT=json EXECUTOR_METRICS_PORT=9091
EXPOSE 9091 5555
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:9091/health', timeout=3)"
CMD ["celery", "-A", "taskplatform", "worker", "-Q", "io,cpu,plan", "-l", "INFO"]
