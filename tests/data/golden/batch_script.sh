#!/bin/bash

# Parameters
#SBATCH --account=vision
#SBATCH --comment=slurm-yolo:v1:/shared/runs/RUN
#SBATCH --constraint=a100
#SBATCH --cpus-per-task=8
#SBATCH --gpus-per-node=2
#SBATCH --job-name=yolo-RUN
#SBATCH --mail-type=END
#SBATCH --mem=32G
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --output=/shared/runs/RUN/slurm/%j_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --requeue
#SBATCH --signal=USR2@120
#SBATCH --time=1440
#SBATCH --wckey=submitit

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /shared/runs/RUN/slurm/%j_%t_log.out /opt/slurm-yolo/venv/bin/python -u -m submitit.core._submit /shared/runs/RUN/slurm
