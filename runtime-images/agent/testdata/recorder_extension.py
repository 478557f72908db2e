#!/usr/bin/env python3
"""An external Lambda extension in Python, written against the Extensions API (2020-01-01) with the
standard library only. It registers for INVOKE and SHUTDOWN under its file name and appends one line per
event to the file named by EXT_OUT: "REGISTERED", "INVOKE <requestId> <deadlineMs>", "SHUTDOWN <reason>".
It exits after SHUTDOWN, as an extension should."""

import json
import os
import sys
import urllib.request

BASE = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2020-01-01/extension"
NAME = os.path.basename(sys.argv[0])


def record(line: str) -> None:
    with open(os.environ["EXT_OUT"], "a", encoding="utf-8") as f:
        f.write(line + "\n")


def main() -> None:
    req = urllib.request.Request(
        BASE + "/register",
        data=json.dumps({"events": ["INVOKE", "SHUTDOWN"]}).encode(),
        headers={"Lambda-Extension-Name": NAME},
        method="POST",
    )
    with urllib.request.urlopen(req) as resp:
        ext_id = resp.headers["Lambda-Extension-Identifier"]
        info = json.load(resp)
    record("REGISTERED " + info["functionName"])
    while True:
        req = urllib.request.Request(BASE + "/event/next", headers={"Lambda-Extension-Identifier": ext_id})
        with urllib.request.urlopen(req) as resp:
            event = json.load(resp)
        if event["eventType"] == "INVOKE":
            record("INVOKE %s %d" % (event["requestId"], event["deadlineMs"]))
        else:
            record("SHUTDOWN " + event["shutdownReason"])
            return


if __name__ == "__main__":
    main()
