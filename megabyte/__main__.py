import sys

from megabyte.cli import main

sys.exit(main())
