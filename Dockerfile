# CPU image that installs pad-lightning and runs the default PAD experiment (toy world, offline).
FROM python:3.11-slim
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
# torch first, from the CPU index, so no CUDA build is pulled in
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY src ./src
COPY conf ./conf
RUN pip install --no-cache-dir -e .
ENV HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PAD_LIGHTNING_CACHE=/cache
VOLUME ["/cache", "/app/outputs"]
CMD ["python", "-m", "pad_lightning.run"]
