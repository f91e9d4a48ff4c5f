FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN useradd --create-home taskplatform
USER taskplatform
ENV PYTHONUNBUFFERED=1
CMD ["celery", "-A", "taskplatform", "worker", "-Q", "io,cpu,plan", "-l", "INFO"]
