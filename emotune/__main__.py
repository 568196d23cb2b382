import sys

from emotune.launch.cli import main

sys.exit(main())
