"""Turning a function folder into ``spec.code``: build (Maven, Go), collect files, inline or zip, upload.

Inline when every file is UTF-8 text with a plain name and all of them fit in a ConfigMap; otherwise a
deterministic zip (sorted names, fixed timestamps, 0644/0755 modes) uploaded to an S3-compatible bucket with a
SigV4-signed PutObject (the same signer as ``kubelambda fetch-code``: no AWS SDK needed) and referenced as
``code.s3`` with its SHA-256, which the init container checks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubelambda.cli._common import CliError
from kubelambda.fetchcode import Credentials, s3_object_url, sigv4_headers

MANIFEST = "function.yaml"
INLINE_LIMIT = 1024 * 1024
"""resources.configmap.CONFIGMAP_LIMIT_BYTES (a ConfigMap's 1 MiB), repeated so the CLI starts without the API models."""
INLINE_NAME = re.compile(r"^[A-Za-z0-9_][-._A-Za-z0-9]*$")  # the CRD's rule for inline file names
INLINE_MAX_FILES = 64
IGNORED_DIRS = {".git", ".hg", ".svn", "__pycache__", ".kubelambda", ".venv", ".idea", ".vscode"}
IGNORED_SUFFIXES = (".pyc", ".pyo", ".swp", "~")
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass
class Package:
    """The files of a function's code: relative POSIX path → (content, executable)."""

    files: dict[str, tuple[bytes, bool]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(k.encode()) + len(v) for k, (v, _) in self.files.items())


def collect(folder: Path, *, skip: tuple[str, ...] = (MANIFEST,)) -> Package:
    """Every file under ``folder`` but the manifest, dot-folders, caches and editor droppings."""
    package = Package()
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIRS and not d.startswith("."))
        for name in sorted(names):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel in skip or name.startswith(".") or name.endswith(IGNORED_SUFFIXES) or not path.is_file():
                continue
            mode = path.stat().st_mode
            package.files[rel] = (path.read_bytes(), bool(mode & stat.S_IXUSR))
    return package


def inline_files(package: Package, *, limit: int = INLINE_LIMIT) -> tuple[dict[str, str] | None, str]:
    """``(files, "")`` when the package can be ``code.inline``, else ``(None, why not)``."""
    if not package.files:
        return None, "the folder has no code files"
    if len(package.files) > INLINE_MAX_FILES:
        return None, f"{len(package.files)} files, over the inline limit of {INLINE_MAX_FILES}"
    if package.size > limit:
        return None, f"{package.size} bytes, over the inline limit of {limit}"
    out: dict[str, str] = {}
    for name, (data, executable) in package.files.items():
        if not INLINE_NAME.match(name):
            return None, f"{name} is in a subfolder and inline files are flat"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None, f"{name} is binary"
        if executable and not text.startswith("#!"):
            return None, f"{name} must stay executable and inline files lose the execute bit"
        out[name] = text
    return out, ""


def make_zip(package: Package) -> bytes:
    """A reproducible zip: the same files give the same bytes (and so the same SHA-256 and object key)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(package.files):
            data, executable = package.files[name]
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.external_attr = ((0o100755 if executable else 0o100644) & 0xFFFF) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buffer.getvalue()


# ---- builds ----------------------------------------------------------------------------------------


def _run(argv: list[str], *, cwd: Path, what: str, env: dict[str, str] | None = None) -> None:
    program = shutil.which(argv[0])
    if program is None:
        raise CliError(
            f"{what} needs `{argv[0]}`, which is not installed", hint=f"install {argv[0]} and retry"
        )
    done = subprocess.run([program, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise CliError(f"{what} failed (`{' '.join(argv)}` exited {done.returncode}):\n{tail}")


@contextmanager
def built_code(folder: Path, runtime: str, *, progress: Any) -> Iterator[Package]:
    """The package to deploy: Maven's output for a java project, a Go ``bootstrap``, else the folder itself
    (for Python, with ``requirements.txt`` installed beside it by this machine's pip)."""
    if runtime.startswith("java") and (folder / "pom.xml").exists():
        progress("Building with Maven (mvn -B -q package)")
        _run(["mvn", "-B", "-q", "-DskipTests", "package"], cwd=folder, what="the Maven build")
        target = folder / "target"
        package = collect(target / "classes", skip=())
        lib = target / "lib"
        if lib.is_dir():
            for jar in sorted(lib.glob("*.jar")):
                package.files[f"lib/{jar.name}"] = (jar.read_bytes(), False)
        yield package
        return
    if runtime in ("go", "provided") and (folder / "go.mod").exists():
        progress("Building with Go (GOOS=linux CGO_ENABLED=0 go build -tags lambda.norpc -o bootstrap)")
        with tempfile.TemporaryDirectory(prefix="kubelambda-build-") as out:
            env = {**os.environ, "CGO_ENABLED": "0", "GOOS": "linux"}
            _run(
                [
                    "go",
                    "build",
                    "-trimpath",
                    "-tags",
                    "lambda.norpc",
                    "-ldflags",
                    "-s -w",
                    "-o",
                    f"{out}/bootstrap",
                    ".",
                ],
                cwd=folder,
                what="the Go build",
                env=env,
            )
            yield Package({"bootstrap": ((Path(out) / "bootstrap").read_bytes(), True)})
        return
    if runtime.startswith("python") and _has_requirements(folder / "requirements.txt"):
        # Lambda's deployment package layout: the dependencies at the top, next to the handler.
        progress("Installing requirements.txt (pip install --target)")
        with tempfile.TemporaryDirectory(prefix="kubelambda-deps-") as out:
            _run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
                 "--target", out, "-r", "requirements.txt"],
                cwd=folder,
                what="pip install -r requirements.txt",
            )  # fmt: skip
            package = collect(Path(out), skip=())
            package.files = {k: v for k, v in package.files.items() if not k.startswith("bin/")}
            package.files.update(collect(folder).files)
            yield package
        return
    yield collect(folder)


def _has_requirements(path: Path) -> bool:
    if not path.exists():
        return False
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return any(lines)


# ---- the bucket ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    endpoint: str  # where this machine reaches the S3 API
    name: str
    region: str = "us-east-1"
    pod_endpoint: str | None = None  # where function pods reach it, when it differs (in-cluster DNS)
    credentials_secret: str | None = None


def _s3_request(
    method: str, url: str, body: bytes, *, bucket: Bucket, credentials: Credentials | None
) -> None:
    headers: dict[str, str] = {}
    if credentials is not None:
        headers = sigv4_headers(
            method,
            url,
            headers={},
            region=bucket.region,
            credentials=credentials,
            now=dt.datetime.now(dt.UTC),
            payload_sha256=hashlib.sha256(body).hexdigest(),
        )
    request = urllib.request.Request(
        url, data=body if method == "PUT" else None, headers=headers, method=method
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        resp.read()


def _create_bucket(bucket: Bucket, credentials: Credentials | None) -> bool:
    try:
        _s3_request(
            "PUT", f"{bucket.endpoint.rstrip('/')}/{bucket.name}", b"", bucket=bucket, credentials=credentials
        )
    except urllib.error.HTTPError:
        return False  # it exists already (409), or we may not create it: the PutObject error says more
    return True


def upload(data: bytes, key: str, *, bucket: Bucket, env: dict[str, str]) -> None:
    """PutObject (path-style). A missing bucket is created once: AWS answers 404 NoSuchBucket, SeaweedFS 403."""
    credentials = Credentials.from_env(env)
    url = s3_object_url(bucket.endpoint, bucket.name, key)
    for attempt in range(2):
        try:
            _s3_request("PUT", url, data, bucket=bucket, credentials=credentials)
            return
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            if e.code in (403, 404) and attempt == 0 and _create_bucket(bucket, credentials):
                continue
            code = re.search(r"<Code>([^<]+)</Code>", text)
            raise CliError(
                f"S3 PutObject s3://{bucket.name}/{key} at {bucket.endpoint} failed: "
                f"{e.code} {code.group(1) if code else text[:200]}",
                hint="check --bucket, --s3-endpoint and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
            ) from e
        except urllib.error.URLError as e:
            raise CliError(
                f"cannot reach the bucket's endpoint {bucket.endpoint}: {e.reason}",
                hint="check --s3-endpoint (or $KUBELAMBDA_S3_ENDPOINT)",
            ) from e


def s3_code(data: bytes, *, bucket: Bucket, namespace: str, name: str) -> tuple[dict[str, Any], str]:
    """``code.s3`` for a zip (the key is content-addressed: a redeploy of the same code changes nothing)."""
    digest = hashlib.sha256(data).hexdigest()
    key = f"kubelambda/{namespace}/{name}/{digest}.zip"
    code: dict[str, Any] = {
        "endpoint": bucket.pod_endpoint or bucket.endpoint,
        "bucket": bucket.name,
        "key": key,
        "sha256": digest,
        "region": bucket.region,
    }
    if bucket.credentials_secret:
        code["credentialsSecret"] = bucket.credentials_secret
    return code, key
