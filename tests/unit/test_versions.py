"""Versions, aliases and the control-plane API's pure parts: the resolve step, qualifiers, Lambda's shapes."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from typing import Any

import pytest

from kubelambda.api.v1alpha1 import FunctionSpec, alias_object_name
from kubelambda.gateway import lambdaapi, lambdaextras
from kubelambda.gateway.codestore import CodeStore, StoreError, check_zip
from kubelambda.gateway.config import GatewaySettings
from kubelambda.gateway.functionname import (
    BadFunctionName,
    FunctionRef,
    parse_function_name,
    qualified,
    qualified_arn,
)
from kubelambda.gateway.registry import NotFound, Registry, RegistryLookups
from kubelambda.gateway.throttler import RESERVED, Throttled, Throttler
from kubelambda.resources.deployment import function_env
from kubelambda.resources.names import FunctionObject
from kubelambda.settings import OperatorSettings

SPEC = {"runtime": "python3.12", "handler": "app.handler", "code": {"inline": {"app.py": "x"}}}
READY = {"conditions": [{"type": "Ready", "status": "True", "reason": "ScaledToZero", "message": "zero"}]}


def function(name: str, *, version_of: tuple[str, int] | None = None, **meta: Any) -> dict[str, Any]:
    spec: dict[str, Any] = dict(SPEC)
    if version_of is not None:
        spec["versionOf"] = {"function": version_of[0], "version": version_of[1]}
    return {
        "metadata": {"name": name, "namespace": "demo", "uid": "u", "generation": 1, **meta},
        "spec": spec,
        "status": {**READY, "observedGeneration": 1},
    }


def alias(name: str, version: str, extra: tuple[str, float] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"function": "hello", "name": name, "functionVersion": version}
    if extra is not None:
        spec["routing"] = [{"version": extra[0], "weight": extra[1]}]
    return {"metadata": {"name": alias_object_name("hello", name), "namespace": "demo"}, "spec": spec}


@pytest.fixture
def registry() -> Registry:
    r = Registry()
    r.apply_function("ADDED", function("hello"))
    r.apply_function("ADDED", function("hello-v1", version_of=("hello", 1)))
    r.apply_function("ADDED", function("hello-v2", version_of=("hello", 2)))
    r.apply_alias("ADDED", alias("live", "1", ("2", 0.1)))
    r.apply_alias("ADDED", alias("edge", "$LATEST"))
    return r


def ref(qualifier: str = "$LATEST") -> FunctionRef:
    return FunctionRef("demo", "hello", qualifier)


def test_resolve_latest_versions_and_aliases(registry: Registry) -> None:
    assert (registry.resolve(ref()).entry.name, registry.resolve(ref()).version) == ("hello", "$LATEST")
    assert (registry.resolve(ref("2")).entry.name, registry.resolve(ref("2")).version) == ("hello-v2", "2")
    # The weighted alias: a draw under the weight runs the additional version.
    assert registry.resolve(ref("live"), draw=0.05).version == "2"
    assert registry.resolve(ref("live"), draw=0.1).version == "1"
    assert registry.resolve(ref("live"), draw=0.99).entry.name == "hello-v1"
    assert registry.resolve(ref("edge")).version == "$LATEST"


@pytest.mark.parametrize(
    ("name", "qualifier", "what"),
    [("nope", "$LATEST", "function"), ("hello", "3", "version"), ("hello", "prod", "alias"), ("hello-v1", "1", "qualifier")],
)  # fmt: skip
def test_resolve_names_what_is_missing(registry: Registry, name: str, qualifier: str, what: str) -> None:
    with pytest.raises(NotFound, match=what):
        registry.resolve(FunctionRef("demo", name, qualifier))


def test_deleted_versions_and_aliases_leave_the_cache(registry: Registry) -> None:
    registry.apply_function("DELETED", function("hello-v2", version_of=("hello", 2)))
    registry.apply_alias("DELETED", alias("live", "1"))
    assert ("demo", "hello", "2") not in registry.versions
    assert ("demo", "hello", "live") not in registry.aliases
    with pytest.raises(NotFound):
        registry.resolve(ref("2"))
    # A moved alias replaces the old entry (one object, one alias).
    registry.apply_alias("MODIFIED", alias("edge", "1"))
    assert registry.resolve(ref("edge")).version == "1"
    assert len(registry.aliases) == 1


def test_an_alias_written_here_is_not_moved_back_by_an_older_watch_event(registry: Registry) -> None:
    """The Lambda API applies its own alias write at once (the very next call routes by it); the watch may still
    bring the object as it was before the write, or the write itself: neither moves the alias back."""

    def at(body: dict[str, Any], version: str) -> dict[str, Any]:
        body["metadata"]["resourceVersion"] = version
        return body

    registry.apply_alias("MODIFIED", at(alias("live", "1", ("2", 0.1)), "10"))
    registry.apply_alias("MODIFIED", at(alias("live", "2"), "12"))  # UpdateAlias' own write
    for late in (at(alias("live", "1", ("2", 0.1)), "11"), at(alias("live", "2"), "12")):
        registry.apply_alias("MODIFIED", late)  # one from before the write, then the write's own event
        held = registry.aliases[("demo", "hello", "live")]
        assert (held.version, held.additional, held.weight) == ("2", None, 0.0)
        assert all(registry.resolve(ref("live")).version == "2" for _ in range(200))
    registry.apply_alias("MODIFIED", at(alias("live", "1"), "13"))  # a later move (another replica's)
    assert registry.resolve(ref("live")).version == "1"
    registry.apply_alias("DELETED", at(alias("live", "1"), "14"))
    registry.apply_alias("ADDED", at(alias("live", "2"), "15"))  # made again
    assert registry.resolve(ref("live")).version == "2"


def test_a_version_answers_as_its_function() -> None:
    r = Registry()
    r.apply_function("ADDED", function("hello-v1", version_of=("hello", 1)))
    entry = r.functions[("demo", "hello-v1")]
    assert (entry.lambda_name, entry.version) == ("hello", "1")
    fn = FunctionObject.from_body(function("hello-v1", version_of=("hello", 1)))
    env = {e["name"]: e["value"] for e in function_env(fn, settings=OperatorSettings(kubeconfig=None))}
    assert (env["KUBELAMBDA_FUNCTION_NAME"], env["KUBELAMBDA_FUNCTION_VERSION"]) == ("hello", "1")


def test_qualifier_parameter_and_arn_suffix() -> None:
    named = parse_function_name("arn:aws:lambda:us-east-1:demo:function:hello:live", default_namespace="x")
    assert named == FunctionRef("demo", "hello", "live")
    assert qualified(named, "live") == named
    assert qualified(FunctionRef("demo", "hello"), "3").qualifier == "3"
    assert qualified(FunctionRef("demo", "hello"), None).qualifier == "$LATEST"
    with pytest.raises(BadFunctionName, match="does not match"):
        qualified(named, "2")
    with pytest.raises(BadFunctionName, match="Qualifier"):
        qualified(FunctionRef("demo", "hello"), "a b")
    assert qualified_arn(named, "us-east-1") == "arn:aws:lambda:us-east-1:demo:function:hello:live"
    assert (
        qualified_arn(FunctionRef("demo", "hello"), "eu-west-1")
        == "arn:aws:lambda:eu-west-1:demo:function:hello"
    )


def test_alias_object_names() -> None:
    assert alias_object_name("hello", "live") == "hello.live"
    odd = alias_object_name("hello", "Blue_Green")
    assert odd.startswith("hello.blue-green-")
    assert odd != alias_object_name("hello", "blue_green")  # aliases are case-sensitive


def test_state_for_the_waiters() -> None:
    assert lambdaapi.state_of(function("a"))[::2] == ("Active", "Successful")
    pending = function("a")
    pending["metadata"]["generation"] = 2
    assert lambdaapi.state_of(pending)[::2] == ("Pending", "InProgress")
    failed = function("a")
    failed["status"]["conditions"] = [
        {"type": "Ready", "status": "False", "reason": "RuntimeUnknown", "message": "no image"}
    ]
    assert lambdaapi.state_of(failed) == ("Failed", "RuntimeUnknown: no image", "Failed")


def test_configuration_of_a_version() -> None:
    config = lambdaapi.configuration(function("hello-v3", version_of=("hello", 3)), "us-east-1")
    assert config["FunctionName"] == "hello"
    assert config["FunctionArn"] == "arn:aws:lambda:us-east-1:demo:function:hello:3"
    assert (config["Version"], config["State"], config["Runtime"]) == ("3", "Active", "python3.12")
    assert config["Role"] == "arn:aws:iam::demo:role/default"  # no ServiceAccount


@pytest.mark.parametrize(
    ("role", "account"),
    [
        ("arn:aws:iam::123456789012:role/runner", "runner"),
        ("arn:aws:iam::demo:role/path/to/runner", "runner"),
    ],
)
def test_role_names_a_service_account(role: str, account: str) -> None:
    assert lambdaapi.role_account(role, "demo") == account


@pytest.mark.parametrize(
    ("role", "says"),
    [("runner", "not an IAM role ARN"), ("arn:aws:iam::other:role/x", "names namespace 'other'"), ("arn:aws:iam::1:role/Big", "ServiceAccount")],
)  # fmt: skip
def test_bad_roles_name_the_field(role: str, says: str) -> None:
    with pytest.raises(lambdaapi.Failure, match=says) as info:
        lambdaapi.role_account(role, "demo")
    assert info.value.message.startswith("Role: ")


def zipped(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def test_zips_become_inline_code_or_say_why_not() -> None:
    assert lambdaapi.unzip_inline(zipped({"app.py": b"x = 1\n"})) == {"app.py": "x = 1\n"}
    for files, says in (
        ({"pkg/app.py": b"x"}, "not a top-level file"),
        ({"lib.so": b"\xff\xfe\x00"}, "not UTF-8 text"),
    ):
        with pytest.raises(lambdaapi.Failure, match=says) as info:
            lambdaapi.unzip_inline(zipped(files))
        assert info.value.code == "CodeStorageExceededException"
    with pytest.raises(lambdaapi.Failure, match="not a zip"):
        lambdaapi.unzip_inline(b"nope")


def test_runtime_names() -> None:
    assert lambdaapi.kube_runtime("nodejs20.x") == "nodejs20"
    assert lambdaapi.kube_runtime("provided.al2023") == "provided"
    assert lambdaapi.lambda_runtime("nodejs22") == "nodejs22.x"
    assert lambdaapi.lambda_runtime("python3.12") == "python3.12"


def test_spec_changes_name_the_lambda_field() -> None:
    changes = lambdaapi.spec_changes(
        {"MemorySize": 256, "Timeout": 9, "Environment": {"Variables": {"A": "b"}}, "EphemeralStorage": {"Size": 600}},
        "demo",
    )  # fmt: skip
    assert changes == {
        "memoryMB": 256,
        "timeoutSeconds": 9,
        "environment": {"A": "b"},
        "ephemeralStorageMB": 600,
    }
    with pytest.raises(lambdaapi.Failure, match=r"^MemorySize: "):
        lambdaapi.spec_changes({"MemorySize": "big"}, "demo")
    with pytest.raises(lambdaapi.Failure, match=r"^spec\.memoryMB: "):
        lambdaapi.check_spec({**SPEC, "memoryMB": 64})


def test_logging_config_maps_to_spec_logging_and_back() -> None:
    assert lambdaapi.spec_changes({"LoggingConfig": {"LogFormat": "JSON", "ApplicationLogLevel": "WARN"}}, "demo", "hello") == {
        "logging": {"logFormat": "JSON", "applicationLogLevel": "WARN"}
    }  # fmt: skip
    same_group = {"LogFormat": "Text", "LogGroup": "/aws/lambda/hello"}
    assert lambdaapi.spec_changes({"LoggingConfig": same_group}, "demo", "hello") == {
        "logging": {"logFormat": "Text"}
    }
    for config, message in [
        ({"LogFormat": "XML"}, r"^LoggingConfig\.LogFormat: 'XML' is not one of Text, JSON"),
        (
            {"LogFormat": "Text", "SystemLogLevel": "WARN"},
            r"^LoggingConfig\.SystemLogLevel: a log level needs LogFormat JSON",
        ),
        (
            {"LogFormat": "JSON", "SystemLogLevel": "ERROR"},
            r"^LoggingConfig\.SystemLogLevel: 'ERROR' is not one of DEBUG",
        ),
        ({"LogGroup": "/custom/group"}, r"^LoggingConfig\.LogGroup: '/custom/group': kubelambda keeps"),
        ("JSON", r"^LoggingConfig: must be an object"),
    ]:
        with pytest.raises(lambdaapi.Failure, match=message):
            lambdaapi.spec_changes({"LoggingConfig": config}, "demo", "hello")
    text = lambdaapi.logging_config(FunctionSpec.model_validate(SPEC), "hello")
    assert text == {"LogFormat": "Text", "LogGroup": "/aws/lambda/hello"}
    json_spec = FunctionSpec.model_validate(
        {**SPEC, "logging": {"logFormat": "JSON", "systemLogLevel": "WARN"}}
    )
    assert lambdaapi.logging_config(json_spec, "hello") == {
        "LogFormat": "JSON",
        "ApplicationLogLevel": "INFO",
        "SystemLogLevel": "WARN",
        "LogGroup": "/aws/lambda/hello",
    }


def test_reserved_concurrency_counts_a_function_with_its_versions() -> None:
    throttler = Throttler()
    with (
        throttler.admit("demo/hello", reserved=2, function="demo/hello"),
        throttler.admit("demo/hello-v1", reserved=2, function="demo/hello"),
    ):
        with (
            pytest.raises(Throttled) as info,
            throttler.admit("demo/hello-v2", reserved=2, function="demo/hello"),
        ):
            pass
        assert info.value.reason == RESERVED
        assert throttler.in_flight == {"demo/hello": 1, "demo/hello-v1": 1}  # the autoscaler's, per object
        assert throttler.by_function == {"demo/hello": 2}
    assert (throttler.in_flight, throttler.by_function, throttler.total) == ({}, {}, 0)


def test_code_sha256_is_lambdas_base64() -> None:
    digest = hashlib.sha256(b"zip").hexdigest()
    stored = function("hello")
    stored["spec"] = {
        **SPEC,
        "code": {"archive": {"url": "http://gw/kubelambda/code/x.zip", "sha256": digest}},
    }
    stored["metadata"]["annotations"] = {lambdaapi.CODE_SIZE_ANNOTATION: "3"}
    config = lambdaapi.configuration(stored, "us-east-1")
    assert config["CodeSha256"] == base64.b64encode(hashlib.sha256(b"zip").digest()).decode()
    assert config["CodeSize"] == 3
    assert lambdaapi.same_sha256(config["CodeSha256"], digest)
    assert lambdaapi.same_sha256(digest, digest)
    assert not lambdaapi.same_sha256("0" * 64, digest)


def test_a_code_store_needs_its_secret_key_which_signs_the_code_urls() -> None:
    with pytest.raises(ValueError, match="KUBELAMBDA_GATEWAY_CODE_STORE_SECRET_ACCESS_KEY"):
        GatewaySettings(code_store_endpoint="http://store:8333")
    with pytest.raises(ValueError, match="code_store_gc_grace_seconds"):
        GatewaySettings(
            code_store_endpoint="http://store:8333",
            code_store_secret_access_key="s",
            code_store_gc_grace_seconds=0,
        )


def test_code_urls_are_signed_and_expire() -> None:
    store = CodeStore(
        GatewaySettings(code_store_endpoint="http://store:8333", code_store_secret_access_key="secret")
    )
    sha = hashlib.sha256(b"zip").hexdigest()
    url = store.url("http://gw:8080", sha)
    assert url.startswith(f"http://gw:8080/kubelambda/code/{sha}.zip?expires=0&signature=")
    assert store.sha_of_url(url) == sha
    assert store.sha_of_url("http://example.com/code.zip") is None
    other = CodeStore(
        GatewaySettings(code_store_endpoint="http://store:8333", code_store_secret_access_key="other")
    )
    assert other.url("http://gw:8080", sha) != url  # the key comes from the store's secret
    assert "expires=0" not in store.location("http://gw:8080", sha)


def test_check_zip_says_what_is_wrong() -> None:
    with pytest.raises(StoreError, match=r"Code.ZipFile: not a zip archive"):
        check_zip(b"nope", "Code.ZipFile")
    with pytest.raises(StoreError) as info:
        check_zip(b"x" * (50 * 1024 * 1024 + 1), "Code.ZipFile")
    assert info.value.code == "RequestEntityTooLargeException"


def test_tags_are_an_annotation_and_labels_where_they_fit() -> None:
    tags = lambdaapi._tags({"team": "payments", "cost centre": "R&D 42"})
    annotations, labels = lambdaapi.tag_metadata(tags)
    assert labels == {"tags.kubelambda.io/team": "payments"}
    assert lambdaapi._tags_of({"metadata": {"annotations": annotations}}) == tags
    with pytest.raises(lambdaapi.Failure, match="aws:"):
        lambdaapi._tags({"aws:owner": "x"})


def test_destinations_from_lambdas_strings() -> None:
    ref = FunctionRef("demo", "source")
    arn = "arn:aws:lambda:us-east-1:demo:function"
    assert lambdaextras.destination_of(f"{arn}:sink:live", "D", ref) == {"function": "sink:live"}
    assert lambdaextras.destination_of("arn:aws:lambda:us-east-1:123456789012:function:sink", "D", ref) == {
        "function": "sink"
    }
    assert lambdaextras.destination_of("sink:3", "D", ref) == {"function": "sink:3"}
    assert lambdaextras.destination_of("https://hooks.example/x", "D", ref) == {
        "url": "https://hooks.example/x"
    }
    for bad, says in [
        ("arn:aws:sqs:us-east-1:000000000000:q", "SQS, SNS"),
        (f"{arn.replace(':demo:', ':other:')}:sink", "namespace 'other'"),
    ]:
        with pytest.raises(lambdaapi.Failure, match=says):
            lambdaextras.destination_of(bad, "DestinationConfig.OnSuccess.Destination", ref)
    assert lambdaextras.destination_arn({"function": "sink:live"}, ref, "us-east-1") == f"{arn}:sink:live"


def test_a_registry_resolves_a_destination_with_a_qualifier(registry: Registry) -> None:
    class Lookups(RegistryLookups):
        def arn_region(self) -> str:
            return "us-east-1"

    lookups = Lookups()
    lookups.registry = registry
    assert lookups.destination_object("demo", "hello") == "hello"
    assert lookups.destination_object("demo", "hello:2") == "hello-v2"
    assert lookups.destination_object("demo", "hello:edge") == "hello"
    assert lookups.destination_object("demo", "hello:live") in ("hello-v1", "hello-v2")
    assert lookups.destination_object("demo", "hello:nope") == "hello"  # dead-lettered as before
