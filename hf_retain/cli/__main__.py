import sys

from hf_retain.cli import main

sys.exit(main())
