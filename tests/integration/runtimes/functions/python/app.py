"""Handlers the runtime tests call through the agent (our client and awslambdaric alike)."""

import logging
import os
import time

logger = logging.getLogger()
logger.setLevel(logging.INFO)


def echo(event, context):
    return event


def ctx(event, context):
    first = context.get_remaining_time_in_millis()
    time.sleep(0.05)
    second = context.get_remaining_time_in_millis()
    cc = context.client_context
    return {
        "aws_request_id": context.aws_request_id,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": str(context.memory_limit_in_mb),
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "identity": {
            "cognito_identity_id": context.identity.cognito_identity_id,
            "cognito_identity_pool_id": context.identity.cognito_identity_pool_id,
        },
        "client_context": None
        if cc is None
        else {"installation_id": cc.client.installation_id, "custom": cc.custom, "env": cc.env},
        "remaining": [first, second],
        "trace_id": os.environ.get("_X_AMZN_TRACE_ID"),
        "env": {k: os.environ.get(k) for k in ("AWS_REGION", "AWS_EXECUTION_ENV", "TZ", "GREETING")},
    }


def fail(event, context):
    raise ValueError("boom: " + str(event.get("why")))


def sleep(event, context):
    time.sleep(event["seconds"])
    return {"slept": event["seconds"]}


def log(event, context):
    logger.info("logged from the handler")
    print("printed from the handler")
    return "ok"


def levels(event, context):
    """One line of each level, a plain print and a printed JSON line: LoggingConfig's levels (docs/logs.md)."""
    log = logging.getLogger("levels")
    log.debug("debug line")
    log.info("info line")
    log.warning("warn line", extra={"tenant": "t1"})
    log.error("error line")
    print("printed line")
    print('{"level": "error", "message": "printed json error"}')
    return "ok"


def unserialisable(event, context):
    return {1, 2}


def crash(event, context):
    os._exit(3)


def grow(event, context):
    return "a" * (event["size"] - 2)  # a JSON string of exactly event["size"] bytes


def decoder_seen(event, context):
    """What a handler can see of the runtime's event decoder (test_runtimes_acceptance: nothing of its orjson), and
    a digest of the event as it arrived."""
    import hashlib
    import json
    import sys

    try:
        import orjson

        found = orjson.__file__
    except ImportError as e:
        found = f"ImportError: {e}"
    with open("/proc/self/maps") as f:  # a native module stays mapped after it left sys.modules
        mapped = sorted({line.split()[-1] for line in f if "orjson" in line})
    return {
        "modules": sorted(name for name in sys.modules if "orjson" in name),
        "path": [p for p in sys.path if "_vendor" in p],
        "import": found,
        "mapped": mapped,
        "digest": hashlib.sha256(json.dumps(event, sort_keys=True).encode()).hexdigest(),
    }
