import sys

from casm.cli import main

sys.exit(main())
