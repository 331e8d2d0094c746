#!/usr/bin/env bash
# fsar train on a SLURM cluster: one torchrun per node, one process per GPU (NCCL).
#
#   sbatch scripts/slurm_train.sh RECIPE OUT [fsar train options...]
#   sbatch --nodes 4 --gpus-per-node 8 scripts/slurm_train.sh ssv2_full runs/ssv2_full --mode finetune
#
# OUT must be on a file system every node sees (rank 0 writes it; a resume reads it). A requeued
# or resubmitted job resumes the run in OUT from its last.pt (the same recipe and --set options
# are required; resume with the same number of processes for a bit-exact continuation).
#SBATCH --job-name=fsar-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: sbatch $0 RECIPE OUT [fsar train options...]" >&2
    exit 2
fi
RECIPE=$1
OUT=$2
shift 2

# the environment with fsar installed (edit for your cluster)
if [[ -f .venv/bin/activate ]]; then
    # shellcheck disable=SC1091
    source .venv/bin/activate
fi

GPUS=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-4}}
GPUS=${GPUS##*:}  # "a100:4" -> 4
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=$(( ${SLURM_CPUS_PER_TASK:-$GPUS} / GPUS > 0 ? ${SLURM_CPUS_PER_TASK:-$GPUS} / GPUS : 1 ))
export FSAR_NO_PROGRESS=1  # a log file, not a terminal: no progress bar redraws

RESUME=()
if [[ -f "$OUT/resolved_recipe.yaml" ]]; then
    RESUME=(--resume)  # requeued or resubmitted: continue from last.pt
fi

srun torchrun \
    --nnodes "$SLURM_NNODES" \
    --nproc_per_node "$GPUS" \
    --rdzv-id "$SLURM_JOB_ID" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$head:29500" \
    -m fsar_cli train "$RECIPE" --out "$OUT" --device cuda "${RESUME[@]}" "$@"
