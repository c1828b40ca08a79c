"""Launchers for multi-process jobs: this machine (`python -m launch.local`), SLURM, TPU pods and Kubernetes."""
