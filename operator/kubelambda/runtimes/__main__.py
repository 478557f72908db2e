"""``python -m kubelambda.runtimes``: run a folder of code through the agent, in the foreground.

python -m kubelambda.runtimes --runtime python3.12 --code examples/hello --handler app.handler
curl -d '{"name": "world"}' http://127.0.0.1:8080/invoke
"""

from __future__ import annotations

import argparse
import os
import sys

from kubelambda.runtimes._build import agent_binary
from kubelambda.runtimes._command import RUNTIMES, local_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubelambda.runtimes", description=__doc__.split("\n")[0])
    parser.add_argument("--runtime", required=True, choices=sorted(RUNTIMES))
    parser.add_argument("--code", required=True, help="folder with the function's code")
    parser.add_argument("--handler", required=True, help="e.g. app.handler")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="invoke address (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="concurrent invocations (default 1)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument("--memory-mb", type=int, default=128)
    parser.add_argument("--name", default="function", help="function name")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="function environment"
    )
    args = parser.parse_args(argv)
    environment = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--env wants KEY=VALUE, got {item!r}")
        environment[key] = value
    cmd = local_command(
        args.runtime,
        args.code,
        args.handler,
        agent=agent_binary(),
        listen=args.listen,
        workers=args.workers,
        timeout_s=args.timeout,
        memory_mb=args.memory_mb,
        function_name=args.name,
        environment=environment,
        base_env=os.environ,
    )
    print(f"invoke with: curl -d '{{}}' {cmd.invoke_url}", file=sys.stderr)
    os.chdir(cmd.cwd)
    os.execve(cmd.argv[0], cmd.argv, cmd.env)


if __name__ == "__main__":
    raise SystemExit(main())
