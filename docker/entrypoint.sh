#!/usr/bin/env bash
# Docker entry point: `docker run IMAGE train cfg.yaml` runs `emotune train cfg.yaml`;
# a launcher or shell as the first word runs as is (`docker run IMAGE deepspeed --num_gpus 8 ...`).
set -euo pipefail

# Hugging Face cache on the mounted volume unless the user chose another place.
export HF_HOME="${HF_HOME:-/cache/huggingface}"
# `docker run --user UID:GID` with a uid the image does not know leaves HOME at / (not writable):
# caches under ~ (torch extensions, matplotlib) then go to a private directory instead.
if [ -z "${HOME:-}" ] || [ ! -w "${HOME}" ]; then
  export HOME=/tmp/home
  mkdir -p "$HOME"
fi

case "${1:-}" in
  deepspeed|torchrun|python|python3|bash|sh|srun|emotune)
    exec "$@"
    ;;
  "")
    exec emotune --help
    ;;
  *)
    exec emotune "$@"
    ;;
esac
