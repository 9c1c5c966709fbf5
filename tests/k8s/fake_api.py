"""A fake Kubernetes API server, with a fake kubelet behind it, for the Kubernetes launch mode's tests.

No cluster can run on these machines (no kubelet, API server, kind or k3s can be installed), so this
stands in for both: an HTTP server in a thread that answers the few core/v1 calls dagster-k8s's
PipesK8sClient makes (create a pod, list pods by name or label, read a pod's log, following it,
delete a pod; list events, for its debug text), in the API's own JSON shapes, so the real
`kubernetes` client and the real PipesK8sClient run against it unchanged. Creating a pod runs its
container's command as a local process (the fake kubelet): the image's `python` is this
interpreter, the container's env is the pod's, with each `secretKeyRef` resolved from the Secrets
the test gives (as the kubelet does), and the process's stdout and stderr, timestamped as the API
server does, are the pod's log. It refuses a pod that the "restricted" Pod Security Standard would
refuse (the admission a hardened namespace enforces).

What it does not stand in for: scheduling, image pulls, resource limits being enforced, a
read-only root filesystem, the network, RBAC (the calls are recorded instead, for the Role's test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.services import REPO


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakePod:
    body: dict[str, Any]
    process: subprocess.Popen
    lines: list[bytes] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: str = field(default_factory=now)

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    def collect(self) -> None:
        """The kubelet's log: each line of the container's output, with the API server's timestamp."""
        last = datetime.now(UTC)
        for raw in iter(self.process.stdout.readline, b""):  # type: ignore[union-attr]
            # Strictly increasing, as the runtime's nanosecond stamps are in practice: PipesK8sClient
            # joins lines that share a stamp into one log item.
            last = max(datetime.now(UTC), last + timedelta(microseconds=1))
            with self.lock:
                self.lines.append(f"{last:%Y-%m-%dT%H:%M:%S.%f}Z ".encode() + raw.rstrip(b"\n") + b"\n")
        self.process.wait()
        self.done.set()

    def status(self) -> dict[str, Any]:
        container = self.body["spec"]["containers"][0]
        code = self.process.poll() if self.done.is_set() else None
        if code is None:
            state = {"running": {"startedAt": self.started}}
            phase = "Running"
        else:
            reason = "Completed" if code == 0 else "Error"
            state = {"terminated": {"exitCode": code, "reason": reason, "startedAt": self.started, "finishedAt": now()}}
            phase = "Succeeded" if code == 0 else "Failed"
        return {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": code is None,
                    "started": code is None,
                    "restartCount": 0,
                    "state": state,
                }
            ],
        }

    def as_json(self) -> dict[str, Any]:
        return {**self.body, "apiVersion": "v1", "kind": "Pod", "status": self.status()}

    def log(self, tail: int | None = None) -> list[bytes]:
        with self.lock:
            return list(self.lines[-tail:] if tail else self.lines)


class FakeKubernetes:
    """The API server and kubelet above; `calls` records each (verb, resource) as RBAC names them."""

    def __init__(self, secrets: dict[str, dict[str, str]], process_env: dict[str, str] | None = None):
        self.secrets = secrets
        self.process_env = process_env or {"PATH": os.environ["PATH"], "HOME": "/tmp", "PYTHONUNBUFFERED": "1"}
        self.pods: dict[tuple[str, str], FakePod] = {}
        self.created: list[dict[str, Any]] = []  # every pod body as the client sent it
        self.calls: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeKubernetes:
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        for pod in self.pods.values():
            pod.process.kill()
        self.server.shutdown()
        self.server.server_close()

    def write_kubeconfig(self, path: Path, namespace: str) -> Path:
        """A kubeconfig naming this server, as `kubectl config view` would write one."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # --- the kubelet ---------------------------------------------------------------------------

    def start_pod(self, namespace: str, body: dict[str, Any]) -> FakePod:
        container = body["spec"]["containers"][0]
        env = {**self.process_env, **{item["name"]: self.env_value(item) for item in container.get("env", [])}}
        command = [sys.executable if part == "python" else part for part in container["command"]]
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        pod = FakePod(body=body, process=process)
        threading.Thread(target=pod.collect, daemon=True).start()
        self.pods[(namespace, pod.name)] = pod
        return pod

    def env_value(self, item: dict[str, Any]) -> str:
        if "value" in item:
            return item["value"]
        ref = item["valueFrom"]["secretKeyRef"]
        return self.secrets[ref["name"]][ref["key"]]

    # --- the API server ------------------------------------------------------------------------

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_) -> None:
                pass

            def do_POST(self) -> None:
                fake.route(self, "POST")

            def do_GET(self) -> None:
                fake.route(self, "GET")

            def do_DELETE(self) -> None:
                fake.route(self, "DELETE")

        return Handler

    def route(self, request: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(request.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")  # api v1 namespaces NS pods [NAME [log]]
        if parts[:3] != ["api", "v1", "namespaces"] or len(parts) < 5:
            return self.answer(request, 404, status(404, f"no route {method} {url.path}"))
        namespace, resource, rest = parts[3], parts[4], parts[5:]
        if resource == "events" and method == "GET":
            self.calls.append(("list", "events"))
            return self.answer(request, 200, {"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": []})
        if resource != "pods":
            return self.answer(request, 404, status(404, f"no resource {resource}"))
        if method == "POST" and not rest:
            return self.create(request, namespace)
        if method == "GET" and not rest:
            self.calls.append(("list", "pods"))
            items = [pod.as_json() for pod in self.matching(namespace, query)]
            return self.answer(request, 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
        pod = self.pods.get((namespace, rest[0]))
        if pod is None:
            return self.answer(request, 404, status(404, f'pods "{rest[0]}" not found'))
        if method == "GET" and rest[1:] == ["log"]:
            self.calls.append(("get", "pods/log"))
            return self.stream_log(request, pod, query)
        if method == "DELETE" and len(rest) == 1:
            self.calls.append(("delete", "pods"))
            pod.process.kill()
            del self.pods[(namespace, rest[0])]
            return self.answer(request, 200, pod.as_json())
        if method == "GET" and len(rest) == 1:
            self.calls.append(("get", "pods"))
            return self.answer(request, 200, pod.as_json())
        return self.answer(request, 404, status(404, f"no route {method} {url.path}"))

    def create(self, request: BaseHTTPRequestHandler, namespace: str) -> None:
        self.calls.append(("create", "pods"))
        body = json.loads(request.rfile.read(int(request.headers["Content-Length"])))
        self.created.append(body)
        problem = restricted_violation(body)
        if problem:
            return self.answer(request, 403, status(403, f'pods "{body["metadata"]["name"]}" is forbidden: {problem}'))
        body["metadata"] = {**body["metadata"], "namespace": namespace, "uid": str(uuid.uuid4())}
        pod = self.start_pod(namespace, body)
        self.answer(request, 201, pod.as_json())

    def matching(self, namespace: str, query: dict[str, str]) -> list[FakePod]:
        pods = [pod for (ns, _), pod in self.pods.items() if ns == namespace]
        if "fieldSelector" in query:
            key, _, value = query["fieldSelector"].partition("=")
            assert key == "metadata.name", f"fake API: field selector {key} not implemented"
            pods = [pod for pod in pods if pod.name == value]
        if "labelSelector" in query:
            wanted = dict(term.split("=", 1) for term in query["labelSelector"].split(","))
            pods = [pod for pod in pods if wanted.items() <= pod.body["metadata"].get("labels", {}).items()]
        return pods

    def stream_log(self, request: BaseHTTPRequestHandler, pod: FakePod, query: dict[str, str]) -> None:
        """The pod's log; with follow=true, held open and written as the container prints, until it exits."""
        timestamps = query.get("timestamps", "").lower() == "true"  # the client sends "True"
        request.send_response(200)
        request.send_header("Content-Type", "text/plain")
        request.end_headers()  # HTTP/1.0: the body ends when the connection closes
        sent = 0
        while True:
            finished = pod.done.is_set()
            lines = pod.log(int(query["tailLines"]) if "tailLines" in query else None)
            for line in lines[sent:]:
                request.wfile.write(line if timestamps else line.split(b" ", 1)[1])
            request.wfile.flush()
            sent = len(lines)
            if query.get("follow", "").lower() != "true" or finished:
                return
            pod.done.wait(0.05)

    def answer(self, request: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        request.send_response(code)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


def status(code: int, message: str) -> dict[str, Any]:
    reason = {403: "Forbidden", 404: "NotFound"}.get(code, "Unknown")
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def restricted_violation(body: dict[str, Any]) -> str | None:
    """What the "restricted" Pod Security Standard refuses in this pod, as admission words it; None if nothing."""
    spec = body["spec"]
    pod_context = spec.get("securityContext") or {}
    for container in spec["containers"]:
        context = container.get("securityContext") or {}
        if context.get("allowPrivilegeEscalation") is not False:
            return f'allowPrivilegeEscalation != false (container "{container["name"]}")'
        if "ALL" not in (context.get("capabilities") or {}).get("drop", []):
            return f'unrestricted capabilities (container "{container["name"]}" must drop ALL)'
        if not (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")):
            return "runAsNonRoot != true"
        if (context.get("runAsUser") or pod_context.get("runAsUser")) == 0:
            return "runAsUser=0"
        profile = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
        if profile not in ("RuntimeDefault", "Localhost"):
            return "seccompProfile (pod or container must set type to RuntimeDefault or Localhost)"
    return None
