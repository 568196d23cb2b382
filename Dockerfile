# emotune on GPU clusters: `docker run --gpus all -v $PWD/runs:/runs emotune train /runs/config.yaml`
# The base image brings CUDA, cuDNN, NCCL and a matching torch (2.5.1, inside emotune's torch range,
# so pip keeps it); the -devel flavour has nvcc, which DeepSpeed needs to prebuild its ops.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel

# pdsh + openssh-client: DeepSpeed's default multi-node launcher; git: hub downloads of some repos.
# Versions are left to the base image's Ubuntu release (pinning apt versions breaks every base bump).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends pdsh openssh-client git \
 && rm -rf /var/lib/apt/lists/*

# Prebuild the ops that pay off at start-up: FusedAdam (GPU ZeRO-3) and CPUAdam (ZeRO-3 offload);
# JIT-building them costs minutes on every fresh container otherwise. 8.0/9.0 = A100/H100.
ENV DS_BUILD_FUSED_ADAM=1 \
    DS_BUILD_CPU_ADAM=1 \
    TORCH_CUDA_ARCH_LIST="8.0;8.6;9.0" \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/emotune
# Dependencies first (a layer that changes rarely), then the package itself.
COPY pyproject.toml README.md ./
COPY emotune/__init__.py emotune/__init__.py
RUN pip install --no-cache-dir . && pip uninstall -y emotune
COPY emotune emotune
COPY configs configs
# Editable, so the task and run configs under /opt/emotune/configs are found next to the code.
RUN pip install --no-cache-dir --no-deps -e .
COPY docker/entrypoint.sh /usr/local/bin/emotune-entrypoint

# Non-root user; /runs holds run directories, /cache the Hugging Face cache (mount both).
RUN useradd --create-home --uid 1000 emotune \
 && mkdir -p /runs /cache \
 && chown emotune:emotune /runs /cache
USER 1000:1000
ENV HF_HOME=/cache/huggingface \
    EMOTUNE_RUNS=/runs
VOLUME ["/runs", "/cache"]
WORKDIR /runs
ENTRYPOINT ["emotune-entrypoint"]
CMD ["--help"]
