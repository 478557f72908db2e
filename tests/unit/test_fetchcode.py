"""kubelambda fetch-code, pure: checksums, safe unpacking, size caps, the SigV4 signature, the rootfs path."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from kltest.files import zip_bytes as make_zip
from kubelambda import fetchcode
from kubelambda.fetchcode import Credentials, FetchError


def test_sha256_mismatch_names_both_digests() -> None:
    data = b"zip bytes"
    actual = hashlib.sha256(data).hexdigest()
    expected = "0" * 64
    with pytest.raises(FetchError) as e:
        fetchcode.verify_sha256(data, expected, what="http://x/code.zip")
    assert f"expected {expected}, got {actual}" in str(e.value)
    assert fetchcode.verify_sha256(data, actual, what="x") == actual
    assert fetchcode.verify_sha256(data, None, what="x") == actual


@pytest.mark.parametrize("name", ["../evil.py", "a/../../evil.py", "/etc/passwd", "C:/x", "a\\..\\b"])
def test_zip_slip_is_refused_before_anything_is_written(tmp_path: Path, name: str) -> None:
    (tmp_path / "old.txt").write_text("kept")
    data = make_zip({"ok.py": (b"x", 0o100644), name: (b"evil", 0o100644)})
    with pytest.raises(FetchError, match="refusing zip entry"):
        fetchcode.unpack(data, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt"]
    assert not (tmp_path.parent / "evil.py").exists()


def test_exec_bit_kept_and_the_folder_replaced(tmp_path: Path) -> None:
    (tmp_path / "stale.py").write_text("gone after unpacking")
    (tmp_path / "stale-dir").mkdir()
    data = make_zip(
        {
            "bootstrap": (b"#!/bin/sh\necho hi\n", 0o100755),
            "lib/": (b"", 0o40755),
            "lib/handler.py": (b"def handler(e, c): return 1\n", 0o100600),
            "lib/data.bin": (b"\x00" * 1000, 0),  # no Unix mode (zipped elsewhere): a plain readable file
        }
    )
    result = fetchcode.unpack(data, tmp_path)
    assert result == fetchcode.Unpacked(files=3, bytes=18 + 28 + 1000)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "bootstrap",
        "lib",
        "lib/data.bin",
        "lib/handler.py",
    ]
    assert stat.S_IMODE((tmp_path / "bootstrap").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "lib" / "handler.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "lib" / "data.bin").stat().st_mode) == 0o644
    assert os.access(tmp_path / "bootstrap", os.X_OK)


def test_symlinks_inside_are_kept_and_escaping_ones_refused(tmp_path: Path) -> None:
    dest = tmp_path / "task"
    dest.mkdir()
    ok = make_zip({"real.txt": (b"x", 0o100644), "sub/link": (b"../real.txt", 0o120777)})
    fetchcode.unpack(ok, dest)
    assert (dest / "sub" / "link").is_symlink()
    assert (dest / "sub" / "link").read_text() == "x"
    # Lexically inside, physically outside: "sub/up" is the folder itself, so "sub/up/.." is its parent.
    sneaky = make_zip({"sub/up": (b"..", 0o120777), "out": (b"sub/up/..", 0o120777)})
    with pytest.raises(FetchError, match="leaves the target folder"):
        fetchcode.unpack(sneaky, dest)
    absolute = make_zip({"abs": (b"/etc", 0o120777)})
    with pytest.raises(FetchError, match="absolute target"):
        fetchcode.unpack(absolute, dest)


def test_a_symlink_chain_is_checked_once_every_link_exists(tmp_path: Path) -> None:
    dest = tmp_path / "task"
    dest.mkdir()
    # "a" alone is the folder (x is missing); "x" alone is the folder; together "a" is the folder's parent.
    chain = make_zip({"a": (b"x/..", 0o120777), "x": (b".", 0o120777)})
    with pytest.raises(
        FetchError, match=r"'a' -> 'x/\.\.': it leaves the target folder through the zip's other"
    ):
        fetchcode.unpack(chain, dest)
    assert list(dest.iterdir()) == []  # no link left behind


def test_unzipped_size_cap_declared_and_actual(tmp_path: Path) -> None:
    data = make_zip({"big.bin": (b"\x00" * 5000, 0o100644)})
    with pytest.raises(FetchError, match="over the 4096-byte limit"):
        fetchcode.unpack(data, tmp_path, limit=4096)
    # A zip whose header understates the size is stopped while writing, not trusted.
    buf = io.BytesIO(data)
    with zipfile.ZipFile(buf) as z:
        info = z.infolist()[0]
    lying = bytearray(data)
    for offset in (info.header_offset + 22, data.rfind(b"PK\x01\x02") + 24):  # local and central sizes
        lying[offset : offset + 4] = (100).to_bytes(4, "little")
    with pytest.raises(FetchError):
        fetchcode.unpack(bytes(lying), tmp_path, limit=4096)
    assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) <= 4096


def test_not_a_zip(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="not a zip archive"):
        fetchcode.unpack(b"<html>404</html>", tmp_path)


def test_zipped_size_cap() -> None:
    chunks = iter([b"a" * 600, b"b" * 600, b""])
    with pytest.raises(FetchError, match="over the 1000-byte limit"):
        fetchcode._read_capped(lambda n: next(chunks), None, what="GET u", limit=1000)
    with pytest.raises(FetchError, match="is 2000 bytes, over the 1000-byte limit"):
        fetchcode._read_capped(lambda n: b"", "2000", what="GET u", limit=1000)
    chunks = iter([b"a" * 600, b""])
    assert fetchcode._read_capped(lambda n: next(chunks), "600", what="GET u", limit=1000) == b"a" * 600


def test_target_dir_is_under_the_rootfs_when_set() -> None:
    assert fetchcode.target_dir("/var/task", {}) == Path("/var/task")
    assert fetchcode.target_dir("/var/task", {"KUBELAMBDA_ROOTFS": "/pods/p/rootfs/fetch-code"}) == Path(
        "/pods/p/rootfs/fetch-code/var/task"
    )


def test_credentials_from_env() -> None:
    assert Credentials.from_env({}) is None
    assert Credentials.from_env({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}) == Credentials(
        "a", "s"
    )
    with pytest.raises(FetchError, match="AWS_SECRET_ACCESS_KEY is empty"):
        Credentials.from_env({"AWS_ACCESS_KEY_ID": "a"})


def test_sigv4_matches_the_aws_documentation_example() -> None:
    # "Example: GET Object" in the S3 Signature Version 4 documentation (header-based authentication).
    headers = fetchcode.sigv4_headers(
        "GET",
        "https://examplebucket.s3.amazonaws.com/test.txt",
        headers={"Range": "bytes=0-9"},
        region="us-east-1",
        credentials=Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        now=dt.datetime(2013, 5, 24, tzinfo=dt.UTC),
    )
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_sigv4_matches_botocore_for_a_path_style_key_with_odd_characters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import botocore.auth
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    url = fetchcode.s3_object_url("http://127.0.0.1:8333/", "code-bucket", "fns/hello wörld+v1~.zip")
    assert url == "http://127.0.0.1:8333/code-bucket/fns/hello%20w%C3%B6rld%2Bv1~.zip"
    ours = fetchcode.sigv4_headers(
        "GET", url, headers={}, region="eu-west-1", credentials=Credentials("AK", "SK", "TOKEN"), now=now
    )
    request = AWSRequest(method="GET", url=url, headers={"x-amz-content-sha256": fetchcode.EMPTY_SHA256})
    auth = S3SigV4Auth(BotoCredentials("AK", "SK", "TOKEN"), "s3", "eu-west-1")
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now)
    auth.add_auth(request)
    assert ours["Authorization"] == request.headers["Authorization"]


# ---- layers ----------------------------------------------------------------------------------------


def _layer_file(tmp_path: Path, name: str, files: dict[str, tuple[bytes, int]]) -> str:
    path = tmp_path / "sources" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(make_zip(files))
    return str(path)


def test_layers_unpack_in_order_a_later_one_overriding(tmp_path: Path) -> None:
    opt = tmp_path / "opt"
    opt.mkdir()
    (opt / "stale").write_text("from a previous try")
    first = _layer_file(
        tmp_path,
        "1.zip",
        {
            "python/shared/__init__.py": (b"VERSION = 1\n", 0o100644),
            "python/only_first.py": (b"", 0o100644),
            "bin/tool": (b"#!/bin/sh\n", 0o100755),
        },
    )
    second = _layer_file(tmp_path, "2.zip", {"python/shared/__init__.py": (b"VERSION = 2\n", 0o100644)})
    lines = fetchcode.fetch_layers(dest=str(opt), layers=[{"file": first}, {"file": second}], env={})
    assert [line.split(":")[0] for line in lines] == ["layer 1", "layer 2"]
    assert (opt / "python/shared/__init__.py").read_text() == "VERSION = 2\n"
    assert (opt / "python/only_first.py").exists()
    assert stat.S_IMODE((opt / "bin/tool").stat().st_mode) == 0o755
    assert not (opt / "stale").exists()


def test_layers_checks(tmp_path: Path) -> None:
    opt = tmp_path / "opt"
    opt.mkdir()
    ours = _layer_file(tmp_path, "ours.zip", {"kubelambda/bin/kubelambda-agent": (b"x", 0o100755)})
    with pytest.raises(FetchError, match=r"layer 1 .*kubelambda/ is reserved"):
        fetchcode.fetch_layers(dest=str(opt), layers=[{"file": ours}], env={})
    ok = _layer_file(tmp_path, "ok.zip", {"a.txt": (b"a", 0o100644)})
    with pytest.raises(FetchError, match="SHA-256 mismatch for layer 2"):
        fetchcode.fetch_layers(dest=str(opt), layers=[{"file": ok}, {"file": ok, "sha256": "0" * 64}], env={})
    with pytest.raises(FetchError, match="layer 1: a url needs a sha256"):
        fetchcode.fetch_layers(dest=str(opt), layers=[{"url": "http://x/l.zip"}], env={})
    with pytest.raises(FetchError, match="layer 1: want url, s3Endpoint or file"):
        fetchcode.fetch_layers(dest=str(opt), layers=[{"nope": "x"}], env={})
    with pytest.raises(FetchError, match=r"layer 1: /missing\.zip"):
        fetchcode.fetch_layers(dest=str(opt), layers=[{"file": "/missing.zip"}], env={})


def test_layers_share_one_unzipped_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetchcode, "MAX_UNZIPPED", 1500)
    opt = tmp_path / "opt"
    opt.mkdir()
    one = _layer_file(tmp_path, "1.zip", {"a.bin": (b"\x00" * 1000, 0o100644)})
    two = _layer_file(tmp_path, "2.zip", {"b.bin": (b"\x00" * 1000, 0o100644)})
    with pytest.raises(FetchError, match=r"layer 2 .*over the 500-byte limit"):
        fetchcode.fetch_layers(dest=str(opt), layers=[{"file": one}, {"file": two}], env={})


def test_fetch_layers_command_reports_bad_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert fetchcode.main_layers(dest="/nowhere", layers_json="{") == 1
    assert "--layers is not JSON" in capsys.readouterr().err
    assert fetchcode.main_layers(dest="/nowhere", layers_json='[{"url": 1}]') == 1
    assert "JSON array of objects of strings" in capsys.readouterr().err
