#!/usr/bin/env bash
# Run a longjax main on every host of a Cloud TPU pod slice (jax.distributed finds the peers itself).
#
#   launch/tpu_pod.sh TPU_NAME ZONE -- python -m longjax.train --config configs/llama2_7b.py --workdir gs://b/run
#
# Copies this checkout to every worker, installs it with the TPU extra, and runs the command on all
# workers at once. Set PROJECT to pass --project; set SKIP_SETUP=1 to reuse an earlier install.
set -euo pipefail
if [ $# -lt 4 ] || [ "$3" != "--" ]; then
  echo "usage: $0 TPU_NAME ZONE -- COMMAND..." >&2
  exit 2
fi
name=$1 zone=$2
shift 3
project=${PROJECT:+--project=$PROJECT}
here=$(cd "$(dirname "$0")/.." && pwd)
tpu() { gcloud compute tpus tpu-vm "$@" "$name" --zone="$zone" $project; }
if [ "${SKIP_SETUP:-0}" != 1 ]; then
  tar -C "$here" --exclude=.venv --exclude=.git -czf /tmp/longjax.tgz .
  tpu scp /tmp/longjax.tgz --worker=all -- "$name":/tmp/longjax.tgz 2>/dev/null || \
    gcloud compute tpus tpu-vm scp /tmp/longjax.tgz "$name":/tmp/longjax.tgz --worker=all --zone="$zone" $project
  tpu ssh --worker=all --command="mkdir -p ~/longjax && tar -C ~/longjax -xzf /tmp/longjax.tgz && \
    python3 -m venv ~/longjax/.venv && ~/longjax/.venv/bin/pip install -q -e '~/longjax[tpu]'"
fi
printf -v cmd '%q ' "$@"
tpu ssh --worker=all --command="cd ~/longjax && source .venv/bin/activate && $cmd"
