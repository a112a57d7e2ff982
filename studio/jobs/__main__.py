import sys

from studio.jobs.runner import main

sys.exit(main(sys.argv[1:]))
