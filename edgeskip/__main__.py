import sys

from edgeskip.cli import main

sys.exit(main())
