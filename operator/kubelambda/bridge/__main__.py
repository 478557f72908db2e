"""``python -m kubelambda.bridge --trigger NS/NAME``: the same command as ``kubelambda bridge``."""

import sys

from kubelambda.cli import main

sys.exit(main(["bridge", *sys.argv[1:]]))
