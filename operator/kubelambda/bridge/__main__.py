"""``python -m kubelambda.bridge --trigger NS/NAME`` (the same as ``kubelambda bridge``)."""

import argparse
import logging
import sys

from kubelambda.bridge import main

parser = argparse.ArgumentParser(prog="kubelambda bridge", description="run the bridge of one Trigger")
parser.add_argument("--trigger", required=True, metavar="NAMESPACE/NAME", help="the Trigger to serve")
args = parser.parse_args()
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
sys.exit(main(args.trigger))
