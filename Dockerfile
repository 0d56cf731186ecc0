# The image `shipyard deploy k8s` names: Shipyard with the Ray engine, CPU only.
#   docker build -t shipyard:0.1.0 .
# KubeRay runs `ray start` in it (its own command); KServe runs `shipyard serve ...`.
# Not built by the test suite (no container runtime there): check it with `docker build`.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1 \
    RAY_USAGE_STATS_ENABLED=0

# KubeRay's probes call wget; bash runs its start command.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget bash \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/shipyard
# The CPU build of torch first, so that resolving Shipyard never pulls a CUDA build.
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[ray]"

# KubeRay's images run as uid 1000 ("ray"); so does this one.
RUN useradd --uid 1000 --create-home ray
USER 1000
WORKDIR /home/ray

EXPOSE 8000 8080 8081
ENTRYPOINT ["shipyard"]
CMD ["--help"]
