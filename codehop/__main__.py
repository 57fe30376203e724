import sys

from codehop.cli import main

sys.exit(main())
