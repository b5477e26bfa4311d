# pad-lightning on the CPU: installs the package and runs the default PAD experiment (toy world,
# offline). Build arguments (README "Docker"):
#   BASE         the base image (a Debian-like image with Python 3.10+ and venv): python:3.11-slim,
#                or a local base made by docker/build-local-base.sh where no registry is reachable
#   TORCH        what pip installs as torch (a requirement or a wheel path under docker/wheels/)
#   TORCH_INDEX  the index it comes from ("" = the default index / a local wheel)
#   PIP_CERT     a CA bundle (under docker/ca/) for pip behind a TLS-intercepting proxy ("" = none)
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
ARG PIP_CERT=""
WORKDIR /app
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY docker/ ./docker/
# torch first, from its CPU index (or a local wheel), so that no CUDA build is pulled in
RUN python3 -m venv /opt/venv \
    && pip install ${PIP_CERT:+--cert $PIP_CERT} ${TORCH_INDEX:+--index-url $TORCH_INDEX} "$TORCH"
COPY pyproject.toml README.md ./
COPY src ./src
COPY conf ./conf
RUN pip install ${PIP_CERT:+--cert $PIP_CERT} -e . && rm -rf docker/wheels
ENV HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PAD_LIGHTNING_CACHE=/cache
VOLUME ["/cache", "/app/outputs"]
CMD ["python", "-m", "pad_lightning.run"]
