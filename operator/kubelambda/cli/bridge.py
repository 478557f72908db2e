"""``kubelambda bridge --trigger NS/NAME``: the process of one Trigger's bridge (the bridge Deployment's command)."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_bridge(args: argparse.Namespace) -> int:
    from kubelambda.bridge import main

    return main(args.trigger)


def register(commands: Any) -> None:
    bridge = commands.add_parser(
        "bridge",
        help="run the bridge of one Trigger (consume its source, invoke its function); "
        "settings from KUBELAMBDA_BRIDGE_* variables",
    )
    bridge.add_argument("--trigger", required=True, metavar="NAMESPACE/NAME", help="the Trigger to serve")
    bridge.set_defaults(func=cmd_bridge)
