"""Launchers (one GPU, N GPUs, a hostfile, SLURM), the rank entry and probe, the pipeline and the demo; the
`emotune` command table itself is emotune/cli.py."""
