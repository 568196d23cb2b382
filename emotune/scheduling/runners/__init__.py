"""Where an evaluation job runs: a local subprocess (`local`) or a SLURM batch job (`slurm`), behind one
interface (`base.Runner`). Both run the same job (`job`: `python -m emotune.scheduling.runners job ...`)."""
