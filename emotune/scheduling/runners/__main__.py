"""`python -m emotune.scheduling.runners job ...`: the evaluation job a runner starts (runners.job)."""

import sys

from emotune.scheduling.runners.job import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
