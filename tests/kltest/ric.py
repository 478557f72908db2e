"""AWS's own runtime interface clients, installed into the cache for the compatibility tests, and AWS Labs'
Lambda Web Adapter (a public extension, built by hack/lambda-web-adapter.sh).

``PYTHONPATH=tests python -m kltest.ric`` (``make runtimes-ric``) installs both and prints the commands that start them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

AWSLAMBDARIC_VERSION = "4.2.2"  # PyPI awslambdaric
AWS_LAMBDA_RIC_VERSION = "4.0.2"  # npm aws-lambda-ric (builds a native addon: needs cmake, make, g++)
# Maven Central com.amazonaws:aws-lambda-java-runtime-interface-client (ships its JNI client for linux x86_64/aarch64).
AWS_LAMBDA_JAVA_RIC_VERSION = "2.10.1"
AWS_LAMBDA_JAVA_RIC_MAIN = "com.amazonaws.services.lambda.runtime.api.client.AWSLambda"
# AWS's Ruby client (gem aws_lambda_ric) is not here: rubygems.org is not reachable from our machines.


def cache_dir() -> Path:
    root = os.environ.get("KUBELAMBDA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kubelambda"
    )
    return Path(root) / "ric"


def _install_once(final: Path, install: Callable[[Path], None]) -> Path:
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
    try:
        install(tmp)
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():  # not a concurrent install that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _run(argv: list[str], cwd: Path | None = None) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def _pip_install(target: Path) -> None:
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-input",
            "--target",
            str(target),
            f"awslambdaric=={AWSLAMBDARIC_VERSION}",
        ]
    )


def _npm_install(target: Path) -> None:
    manifest = {
        "name": "kubelambda-ric",
        "private": True,
        "dependencies": {"aws-lambda-ric": AWS_LAMBDA_RIC_VERSION},
        # npm 11 runs install scripts only for approved packages; this one compiles its client.
        "allowScripts": {"aws-lambda-ric": True},
    }
    (target / "package.json").write_text(json.dumps(manifest, indent=2))
    _run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=target)
    if not (target / "node_modules" / "aws-lambda-ric" / "rapid-client.node").is_file():
        raise RuntimeError("npm installed aws-lambda-ric without building rapid-client.node")


def _maven_install(target: Path) -> None:
    pom = f"""<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
<groupId>io.kubelambda</groupId><artifactId>java-ric</artifactId><version>0</version>
<dependencies><dependency><groupId>com.amazonaws</groupId>
<artifactId>aws-lambda-java-runtime-interface-client</artifactId><version>{AWS_LAMBDA_JAVA_RIC_VERSION}</version>
</dependency></dependencies></project>
"""
    (target / "pom.xml").write_text(pom)
    _run(
        ["mvn", "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={target / 'lib'}"], cwd=target
    )


def ensure_aws_lambda_java_ric() -> Path:
    """A folder whose ``lib/*`` is AWS's Java runtime interface client and its dependencies."""
    return _install_once(cache_dir() / f"aws-lambda-java-ric-{AWS_LAMBDA_JAVA_RIC_VERSION}", _maven_install)


def aws_lambda_java_ric_command(handler: str, *, code: Path | str, java: str = "java") -> list[str]:
    """``java -cp <ric>/lib/*:<code> ...AWSLambda HANDLER``: AWS's Java client serving ``handler``."""
    classpath = f"{ensure_aws_lambda_java_ric() / 'lib' / '*'}:{code}:{Path(code) / 'lib' / '*'}"
    return [java, "-cp", classpath, AWS_LAMBDA_JAVA_RIC_MAIN, handler]


def ensure_awslambdaric() -> Path:
    """A folder to put on PYTHONPATH so that ``python -m awslambdaric HANDLER`` works."""
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    return _install_once(cache_dir() / f"awslambdaric-{AWSLAMBDARIC_VERSION}-{tag}", _pip_install)


def ensure_aws_lambda_ric() -> Path:
    """The entry file of npm's aws-lambda-ric: ``node <it> HANDLER`` runs a handler."""
    folder = _install_once(cache_dir() / f"aws-lambda-ric-{AWS_LAMBDA_RIC_VERSION}", _npm_install)
    return folder / "node_modules" / "aws-lambda-ric" / "index.mjs"


def ensure_lambda_web_adapter() -> Path:
    """The ``lambda-adapter`` binary of AWS Labs' Lambda Web Adapter, built once from its crate (cached)."""
    script = Path(__file__).resolve().parents[2] / "hack" / "lambda-web-adapter.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{script} could not build the Lambda Web Adapter:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip())


def awslambdaric_command(handler: str, *, python: str = sys.executable) -> list[str]:
    return [python, "-m", "awslambdaric", handler]


def aws_lambda_ric_command(handler: str, *, node: str = "node") -> list[str]:
    return [node, str(ensure_aws_lambda_ric()), handler]


def main() -> int:
    py = ensure_awslambdaric()
    js = ensure_aws_lambda_ric()
    jv = ensure_aws_lambda_java_ric()
    lwa = ensure_lambda_web_adapter()
    print(f"awslambdaric:   PYTHONPATH={py} {sys.executable} -m awslambdaric HANDLER")
    print(f"aws-lambda-ric: node {js} HANDLER")
    print(
        f"aws-lambda-java-runtime-interface-client: java -cp '{jv}/lib/*:CODE' {AWS_LAMBDA_JAVA_RIC_MAIN} HANDLER"
    )
    print(f"Lambda Web Adapter: {lwa} (as /opt/extensions/lambda-adapter)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
