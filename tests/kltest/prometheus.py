"""A real Prometheus (Debian's ``prometheus``) scraping the platform as the chart's monitors tell it to.

:func:`scrape_configs` turns the chart's rendered ServiceMonitor and PodMonitors into the scrape jobs the
Prometheus Operator generates from them (Kubernetes service discovery, ``keep`` rules from the selectors and the
port name, the ``namespace``/``pod``/``container``/``service``/``endpoint`` target labels, ``honor_labels`` from
``honorLabels``), so a relabelling mistake in the chart (a metric label overwritten by a target label) shows up
in the tests' queries. The gateway of the tests is a process on loopback, not an Endpoints object: its job is
the ServiceMonitor's, fed by a static target carrying the discovery labels a Service would give it. Debian builds
Prometheus without Kubernetes discovery: :class:`PodDiscovery` serves the pods over HTTP discovery with the
labels Kubernetes discovery gives them.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from kubelambda.devcluster.servers import LocalServer, _http_ok, find_program
from kubelambda.kube import KubeClient, resource_path

JSON = dict[str, Any]


def _meta(name: str) -> str:
    """A Kubernetes label name as Prometheus' discovery spells it in meta labels."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _selector_keeps(selector: JSON, kind: str) -> list[JSON]:
    """``keep`` rules of a label selector, as the Prometheus Operator writes them (``kind``: pod or service)."""
    rules: list[JSON] = []
    label = f"__meta_kubernetes_{kind}_label_"
    present = f"__meta_kubernetes_{kind}_labelpresent_"
    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        rules.append(
            {
                "action": "keep",
                "source_labels": [label + _meta(key), present + _meta(key)],
                "regex": f"({value});true",
            }
        )
    for expr in selector.get("matchExpressions") or []:
        key, op = expr["key"], expr["operator"]
        if op == "Exists":
            rules.append({"action": "keep", "source_labels": [present + _meta(key)], "regex": "true"})
        elif op == "In":
            rules.append(
                {
                    "action": "keep",
                    "source_labels": [label + _meta(key), present + _meta(key)],
                    "regex": f"({'|'.join(expr['values'])});true",
                }
            )
        else:
            raise ValueError(f"selector operator {op!r} of {key!r} is not translated (Exists, In are)")
    return rules


def _target_labels(kind: str, monitor: JSON, port: str) -> list[JSON]:
    common = [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
    ]
    if kind == "ServiceMonitor":
        return [
            *common,
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
            {"target_label": "endpoint", "replacement": port},
        ]
    meta = monitor["metadata"]
    return [
        *common,
        {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"},
        {"target_label": "endpoint", "replacement": port},
    ]


def scrape_configs(
    monitors: list[JSON],
    *,
    interval: str,
    discovery_url: str,
    static_targets: dict[str, JSON],
    secrets: dict[tuple[str, str], str] | None = None,
) -> list[JSON]:
    """Scrape jobs for the rendered ``monitors`` (ServiceMonitor/PodMonitor documents), every ``interval``.

    Pods are discovered through ``discovery_url`` (a :class:`PodDiscovery`). A monitor named in
    ``static_targets`` scrapes that target instead (``{"address": ..., "labels": {...}}``, the labels being the
    ``__meta_kubernetes_*`` labels discovery would give it: a process of the test, not a pod); a ServiceMonitor
    must be (Endpoints are not discovered here). ``secrets`` gives the value of each (Secret name, key) an
    endpoint's ``authorization.credentials`` names."""
    jobs: list[JSON] = []
    for monitor in monitors:
        kind, meta, spec = monitor["kind"], monitor["metadata"], monitor["spec"]
        endpoints = spec["endpoints"] if kind == "ServiceMonitor" else spec["podMetricsEndpoints"]
        for index, endpoint in enumerate(endpoints):
            port = endpoint["port"]
            port_meta = (
                "__meta_kubernetes_endpoint_port_name"
                if kind == "ServiceMonitor"
                else "__meta_kubernetes_pod_container_port_name"
            )
            job: JSON = {
                "job_name": f"{kind.lower()}/{meta['namespace']}/{meta['name']}/{index}",
                "honor_labels": bool(endpoint.get("honorLabels", False)),
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "metrics_path": endpoint.get("path", "/metrics"),
                "relabel_configs": [
                    *_selector_keeps(spec["selector"], "service" if kind == "ServiceMonitor" else "pod"),
                    {"action": "keep", "source_labels": [port_meta], "regex": port},
                    *_target_labels(kind, monitor, port),
                ],
            }
            auth = endpoint.get("authorization")
            if auth is not None:
                ref = auth["credentials"]
                known = (secrets or {}).get((ref["name"], ref["key"]))
                if known is None:
                    raise ValueError(f"{meta['name']}: no value for Secret {ref['name']} key {ref['key']}")
                job["authorization"] = {"type": auth.get("type", "Bearer"), "credentials": known}
            static = static_targets.get(meta["name"])
            if static is not None:
                job["static_configs"] = [{"targets": [static["address"]], "labels": static["labels"]}]
            elif kind == "ServiceMonitor":
                raise ValueError(f"ServiceMonitor {meta['name']} has no target in static_targets")
            else:
                ns_sel = spec.get("namespaceSelector") or {}
                names = [] if ns_sel.get("any") else ns_sel.get("matchNames") or [meta["namespace"]]
                query = f"?namespaces={','.join(names)}" if names else ""
                job["http_sd_configs"] = [{"url": f"{discovery_url}/pods{query}", "refresh_interval": "1s"}]
            jobs.append(job)
    return jobs


def pod_targets(pod: JSON) -> list[JSON]:
    """The targets Prometheus' Kubernetes discovery (role pod) makes of a pod: one per container port."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    ip = status.get("podIP")
    if not ip:
        return []
    common: dict[str, str] = {
        "__meta_kubernetes_namespace": meta["namespace"],
        "__meta_kubernetes_pod_name": meta["name"],
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_uid": meta["uid"],
        "__meta_kubernetes_pod_node_name": spec.get("nodeName", ""),
        "__meta_kubernetes_pod_phase": status.get("phase", ""),
        "__meta_kubernetes_pod_ready": str(
            any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
        ).lower(),
    }
    for key, value in (meta.get("labels") or {}).items():
        common[f"__meta_kubernetes_pod_label_{_meta(key)}"] = value
        common[f"__meta_kubernetes_pod_labelpresent_{_meta(key)}"] = "true"
    for key, value in (meta.get("annotations") or {}).items():
        common[f"__meta_kubernetes_pod_annotation_{_meta(key)}"] = value
        common[f"__meta_kubernetes_pod_annotationpresent_{_meta(key)}"] = "true"
    for owner in meta.get("ownerReferences") or []:
        if owner.get("controller"):
            common["__meta_kubernetes_pod_controller_kind"] = owner["kind"]
            common["__meta_kubernetes_pod_controller_name"] = owner["name"]
    targets = []
    for container in spec["containers"]:
        for port in container.get("ports") or []:
            labels = {
                **common,
                "__meta_kubernetes_pod_container_name": container["name"],
                "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP"),
            }
            targets.append({"targets": [f"{ip}:{port['containerPort']}"], "labels": labels})
    return targets


class PodDiscovery:
    """HTTP service discovery (``GET /pods[?namespaces=a,b]``): the cluster's pods as Prometheus' Kubernetes
    discovery would give them (Debian builds Prometheus without Kubernetes discovery)."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _pods(self, request: web.Request) -> web.Response:
        names = [n for n in request.query.get("namespaces", "").split(",") if n]
        pods: list[JSON] = []
        for namespace in names or [None]:
            listed = await self.kube.get(resource_path("v1", "pods", namespace=namespace))
            pods.extend(listed["items"])
        return web.json_response([t for pod in pods for t in pod_targets(pod)])

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/pods", self._pods)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class PrometheusServer(LocalServer):
    """``prometheus`` with ``config`` (scrape jobs, rule files) and its TSDB under the data dir."""

    name = "prometheus"

    def __init__(self, data_dir: Path, config: JSON) -> None:
        super().__init__(data_dir)
        self.config = config

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _launch(self) -> None:
        binary = find_program("prometheus", provided_by="the Debian package prometheus")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config_file = self.data_dir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._spawn(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=info",
            ]
        )
        await self._wait(lambda: _http_ok(f"{self.url}/-/ready"), timeout=60)

    def _get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                answer = json.load(resp)
        except urllib.error.HTTPError as e:
            raise AssertionError(
                f"Prometheus {path} {params}: {e.code} {e.read().decode(errors='replace')}"
            ) from e
        assert answer["status"] == "success", f"Prometheus {path} {params}: {answer}"
        return answer["data"]

    async def query(self, expr: str) -> list[JSON]:
        """The instant vector of ``expr`` now (``/api/v1/query``)."""
        data = await asyncio.to_thread(self._get, "/api/v1/query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        return list(data["result"])

    async def targets(self) -> list[JSON]:
        return list((await asyncio.to_thread(self._get, "/api/v1/targets"))["activeTargets"])

    async def rules(self) -> list[JSON]:
        return list((await asyncio.to_thread(self._get, "/api/v1/rules"))["groups"])

    async def alerts(self) -> list[JSON]:
        return list((await asyncio.to_thread(self._get, "/api/v1/alerts"))["alerts"])
