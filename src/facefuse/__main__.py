import sys

from facefuse.cli import main

sys.exit(main())
