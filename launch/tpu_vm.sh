#!/usr/bin/env bash
# mma_jax on every worker of a Cloud TPU VM slice: one process per host, all running the same
# command; jax.distributed finds the other workers through the TPU metadata server.
#
#   launch/tpu_vm.sh setup TPU_NAME ZONE         # copy this checkout to all workers, install
#   launch/tpu_vm.sh run   TPU_NAME ZONE -- --config=configs/sft_mma.py --workdir=/mnt/runs/a
#   launch/tpu_vm.sh stop  TPU_NAME ZONE         # SIGTERM on every worker: checkpoint, exit
#
# The workdir must be one directory seen by all workers (Filestore NFS, or a GCS bucket mounted
# with gcsfuse at the same path): every process writes its part of each checkpoint there.
# Running `run` again with the same workdir resumes from the last checkpoint.
# Environment: PROJECT (gcloud project; default gcloud's), REMOTE_DIR (default mma_jax, in the
# workers' home directories), PYTHON (default python3).
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 2; }
[[ $# -ge 3 ]] || usage
action=$1 tpu=$2 zone=$3
shift 3
[[ ${1:-} == "--" ]] && shift
remote_dir=${REMOTE_DIR:-mma_jax}
python=${PYTHON:-python3}
gcloud_args=(--zone "$zone" ${PROJECT:+--project "$PROJECT"} --worker=all)

on_all_workers() {  # ssh to every worker at once; their outputs are interleaved here
  gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_args[@]}" --command "$1"
}

case $action in
  setup)
    archive=$(mktemp -d)/mma_jax.tar.gz
    repo=$(cd "$(dirname "$0")/.." && pwd)
    tar -C "$repo" --exclude=.venv --exclude=.git --exclude='*.pyc' -czf "$archive" .
    gcloud compute tpus tpu-vm scp "$archive" "$tpu":mma_jax.tar.gz "${gcloud_args[@]}"
    on_all_workers "mkdir -p $remote_dir && tar -xzf mma_jax.tar.gz -C $remote_dir && \
      cd $remote_dir && $python -m pip install -U 'jax[tpu]' && $python -m pip install -e ."
    ;;
  run)
    [[ $# -gt 0 ]] || usage
    args=$(printf '%q ' "$@")
    # The pid file lets `stop` reach the run; `wait` keeps this ssh session attached to it.
    on_all_workers "cd $remote_dir && { $python -m mma_jax.main $args & echo \$! > ~/mma_jax.pid; \
      wait \$!; }"
    ;;
  stop)
    on_all_workers 'test -f ~/mma_jax.pid && kill -TERM "$(cat ~/mma_jax.pid)" || true'
    ;;
  *) usage ;;
esac
