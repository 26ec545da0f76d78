# One image for the API, the migrations and the workers (CUDA comes with the torch wheel).
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY jobs jobs
COPY api api
COPY workers workers
COPY ml ml
COPY client client
COPY stack stack
COPY migrations migrations
RUN pip install "torch==2.14.1" "torchvision==0.29.1" \
 && pip install . \
 && pip install --no-deps facenet-pytorch==2.5.3
RUN useradd --create-home facejobs
USER facejobs
EXPOSE 8000
CMD ["facejobs", "api", "--host", "0.0.0.0", "--port", "8000"]
