"""Run a function locally through the kubelambda agent, from a folder of code.

The same table serves the local Kubernetes node (runtime image → command) and
``kubelambda invoke --local``::

    cmd = local_command("python3.12", Path("examples/hello"), "app.handler", agent=agent_binary())
    with LocalFunction(cmd) as fn:
        fn.wait_ready()
        print(fn.invoke(b'{"name": "world"}').body)
"""

from kubelambda.runtimes._build import (
    agent_binary,
    build_go_function,
    compile_java_function,
    java_runtime_dir,
    python_runtime_dir,
    repo_root,
    runtime_images_dir,
)
from kubelambda.runtimes._command import (
    RUNTIMES,
    LocalCommand,
    RuntimeSpec,
    local_command,
    local_runtime_dir,
    pod_command,
    runtime_for_image,
    worker_command,
)
from kubelambda.runtimes._process import InvokeResult, LocalFunction, LocalFunctionError

__all__ = [
    "RUNTIMES",
    "InvokeResult",
    "LocalCommand",
    "LocalFunction",
    "LocalFunctionError",
    "RuntimeSpec",
    "agent_binary",
    "build_go_function",
    "compile_java_function",
    "java_runtime_dir",
    "local_command",
    "local_runtime_dir",
    "pod_command",
    "python_runtime_dir",
    "repo_root",
    "runtime_for_image",
    "runtime_images_dir",
    "worker_command",
]
