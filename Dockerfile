# emotune on GPU clusters: `docker run --gpus all -v $PWD/runs:/runs emotune train /runs/config.yaml`
# The default base brings CUDA, cuDNN, NCCL and a matching torch (2.5.1, inside emotune's torch range,
# so pip keeps it); the -devel flavour has nvcc, which DeepSpeed needs to prebuild its ops.
# The same file builds on a plain Debian base without a GPU (docker/cpu-image.sh does it with podman):
#   --build-arg BASE_IMAGE=debian:bookworm --build-arg TORCH_SPEC=torch==2.13.0 --build-arg DS_BUILD_OPS=0
#   --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu   (or PIP_FIND_LINKS=<wheel dir>)
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel
FROM ${BASE_IMAGE}

# PIP_CERT: a CA bundle for pip where HTTPS goes through a proxy (empty: the image's own bundle).
ARG PIP_CERT=""
# pdsh + openssh-client: DeepSpeed's default multi-node launcher; git: hub downloads of some repos.
# A base without Python (plain Debian) gets Debian's python3 and a venv in /opt/venv; the CUDA base
# keeps its own Python and torch. Versions are left to the base's release (pinning apt versions
# breaks every base bump).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends pdsh openssh-client git ca-certificates \
 && if ! command -v python3 >/dev/null 2>&1; then \
      apt-get install -y --no-install-recommends python3 python3-venv \
      && python3 -m venv /opt/venv \
      && /opt/venv/bin/pip install --no-cache-dir --upgrade "pip>=23" "setuptools>=68" "wheel>=0.40"; \
    fi \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch: empty keeps the base image's (CUDA) torch. A CPU build names one, e.g. torch==2.13.0, and
# where pip finds it (PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS are read by pip from the environment).
ARG TORCH_SPEC=""
ARG PIP_FIND_LINKS=""
ARG PIP_EXTRA_INDEX_URL=""
# The build argument is the pin (torch==X.Y.Z), which hadolint cannot see through the variable.
# hadolint ignore=DL3013
RUN if [ -n "$TORCH_SPEC" ]; then pip install --no-cache-dir "$TORCH_SPEC"; fi

# Prebuild the DeepSpeed ops that pay off at start-up: FusedAdam (GPU ZeRO-3) and CPUAdam (ZeRO-3
# offload); JIT-building them costs minutes on every fresh container otherwise. 8.0/9.0 = A100/H100.
# DeepSpeed is an sdist whose setup.py must see this image's torch to build them, hence no build
# isolation (PIP_NO_BUILD_ISOLATION=0 means --no-build-isolation). DS_BUILD_OPS=0 on a CPU base.
ARG DS_BUILD_OPS=1
ENV TORCH_CUDA_ARCH_LIST="8.0;8.6;9.0"

WORKDIR /opt/emotune
# Dependencies first (a layer that changes rarely), then the package itself, installed (not editable):
# the task files, suites, DeepSpeed JSONs and example configs ship inside it (emotune/configs).
# (An empty README.md stands in for the real one here, so editing the README keeps this layer cached.)
COPY pyproject.toml ./
COPY emotune/__init__.py emotune/__init__.py
RUN touch README.md \
 && pip install --no-cache-dir --upgrade "setuptools>=68" "wheel>=0.40" \
 && DS_BUILD_FUSED_ADAM=$DS_BUILD_OPS DS_BUILD_CPU_ADAM=$DS_BUILD_OPS PIP_NO_BUILD_ISOLATION=0 \
    pip install --no-cache-dir . \
 && pip uninstall -y emotune
COPY README.md ./
COPY emotune emotune
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
 && rm -rf /opt/emotune/build
COPY docker/entrypoint.sh /usr/local/bin/emotune-entrypoint

# Non-root user by default; `docker run --user $(id -u):$(id -g)` writes files as yourself instead
# (any uid works: HOME falls back to /tmp/home when the user has none). /runs holds run directories,
# /cache the Hugging Face and emotune caches (mount both).
RUN useradd --create-home --uid 1000 emotune \
 && mkdir -p /runs /cache \
 && chown emotune:emotune /runs /cache \
 && chmod 1777 /cache
USER 1000:1000
ENV HF_HOME=/cache/huggingface \
    EMOTUNE_CACHE=/cache/emotune \
    EMOTUNE_RUNS=/runs
VOLUME ["/runs", "/cache"]
WORKDIR /runs
ENTRYPOINT ["emotune-entrypoint"]
CMD ["--help"]
