import sys

from enrichproxy.cli import main

sys.exit(main())
