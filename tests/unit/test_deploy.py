"""deploy/ kept in step with the code: the Dockerfile, the Kubernetes examples and compose.

Nothing here builds an image or talks to a cluster (neither exists where the tests run).
Instead every file is parsed and checked against what the gateway really does: each mounted
config goes through the real loader and route compiler with exactly the environment its
container gets, probe paths are asked of a real admin listener, and ports, paths, grace
periods, Secrets and Services are cross-checked between the files and the configs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
import socket
import tomllib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from gateway import __version__
from gateway.app import start_gateway
from gateway.cli import build_parser, describe_routes
from gateway.config.loader import LoadedConfig, load_config, load_config_text

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
IMAGE_CONFIG = DEPLOY / "gateway.yaml"
COMPOSE = DEPLOY / "docker-compose.yml"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
IMAGE_NAME = PROJECT["name"]

# What a user puts in deploy/.env for compose (deploy/README.md shows the same names).
COMPOSE_DOTENV = {
    "OAUTH_ISSUER": "https://auth.example.com/",
    "OAUTH_AUDIENCE": "api://orders",
    "INTROSPECTION_CLIENT_ID": "gateway",
    "INTROSPECTION_CLIENT_SECRET": "introspection-secret",
    "GATEWAY_ADMIN_TOKEN": "admin-token",
    "REDIS_PASSWORD": "0123456789abcdef",
    "GATEWAY_CACHE_KEY": "uMkYPA3c5cmZg2Z0kYQ0xJ4bJ0mBk1a6xw2i1yq0Zt8",
}
# Measured 40-60 MB RSS per worker: the memory limit must cover this many MiB per worker.
WORKER_MEMORY_MIB = 64
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|libc6?-dev|python3?-dev)\b")


# --- the Dockerfile -----------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[tuple[str, str], ...]

    def values(self, keyword: str) -> list[str]:
        return [value for key, value in self.instructions if key == keyword]

    def exec_form(self, keyword: str) -> list[str]:
        """The last ``keyword`` as a JSON array; shell form is refused (no signals via sh)."""
        value = self.values(keyword)[-1]
        assert value.startswith("["), f"{keyword} must use the exec (JSON) form: {value}"
        return json.loads(value)

    def env(self) -> dict[str, str]:
        pairs = (item.split("=", 1) for value in self.values("ENV") for item in shlex.split(value))
        return dict(pairs)

    def copies(self) -> list[tuple[str | None, list[str], str]]:
        """(--from stage or None, sources, destination) of each COPY."""
        found = []
        for value in self.values("COPY"):
            words = shlex.split(value)
            flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
            paths = [w for w in words if not w.startswith("--")]
            found.append((flags.get("from"), paths[:-1], paths[-1]))
        return found


def _logical_lines(text: str) -> Iterator[str]:
    """Instructions with their continuation lines joined; comments dropped, as Docker does."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"


def parse_dockerfile(text: str) -> list[Stage]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    current: list[tuple[str, str]] = []
    for line in _logical_lines(text):
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "ARG" and not stages:
            name, _, default = value.partition("=")
            args[name] = default
        elif keyword == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], value).split()
            current = []
            name = image[2] if len(image) == 3 and image[1].upper() == "AS" else None
            stages.append(Stage(image[0], name, ()))
        else:
            assert stages, f"{keyword} before the first FROM"
            current.append((keyword, value))
            if keyword == "HEALTHCHECK" and " CMD " in f" {value}":
                # Options come before the command: file the command on its own.
                current.append(("HEALTHCHECK CMD", f" {value}".split(" CMD ", 1)[1].strip()))
            stages[-1] = Stage(stages[-1].base, stages[-1].name, tuple(current))
    return stages


STAGES = parse_dockerfile(DOCKERFILE.read_text())
FINAL = STAGES[-1]
IMAGE_ENV = FINAL.env()


def image_user() -> tuple[int, int | None]:
    user, _, group = FINAL.values("USER")[-1].partition(":")
    assert user.isdigit(), f"USER {user!r} must be numeric for runAsNonRoot to verify it"
    return int(user), int(group) if group else None


def healthcheck_url() -> str:
    command = " ".join(FINAL.exec_form("HEALTHCHECK CMD"))
    match = re.search(r"https?://[^'\"\s]+", command)
    assert match, f"no URL in the HEALTHCHECK command: {command}"
    return match.group(0)


def test_final_stage_runs_as_a_fixed_non_root_user() -> None:
    uid, gid = image_user()
    assert uid != 0
    assert gid != 0


def test_final_stage_carries_no_build_tools() -> None:
    stage_names = {stage.name for stage in STAGES[:-1]}
    assert FINAL.base not in stage_names, "the final image must not start from the builder"
    for command in FINAL.values("RUN"):
        assert not BUILD_TOOLS.search(command), f"build tools in the final stage: {command}"
    venv = str(PurePosixPath(IMAGE_ENV["PATH"].split(":")[0]).parent)
    copied = [src for origin, sources, _ in FINAL.copies() if origin for src in sources]
    assert copied, "the final stage copies nothing from the builder"
    assert all(src.rstrip("/") == venv for src in copied), (copied, venv)


def test_stages_share_one_base_image() -> None:
    """The venv's python is a symlink into the base image: both stages need the same one."""
    bases = {stage.base for stage in STAGES}
    assert len(bases) == 1, bases


def test_entrypoint_is_the_console_script_and_cmd_runs() -> None:
    assert FINAL.exec_form("ENTRYPOINT") == ["gateway"]
    assert "gateway" in PROJECT["scripts"]
    args = build_parser().parse_args(FINAL.exec_form("CMD"))
    assert args.command == "run"


def test_config_path_is_where_the_default_config_is_copied() -> None:
    destinations = {
        dest for origin, sources, dest in FINAL.copies() if sources == ["deploy/gateway.yaml"]
    }
    assert destinations == {IMAGE_ENV["GATEWAY_CONFIG"]}


def test_expose_matches_the_default_config() -> None:
    config = image_config().config
    exposed = {int(port) for value in FINAL.values("EXPOSE") for port in value.split()}
    assert exposed == {config.listen.port, config.admin.port}


def test_healthcheck_asks_the_admin_listener_on_loopback() -> None:
    parts = urlsplit(healthcheck_url())
    assert parts.hostname == "127.0.0.1"
    assert parts.port == image_config().config.admin.port
    # The path's meaning is checked against a real admin listener in test_probe_paths.


def _ignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def dockerignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    ignored = False
    for pattern in _ignore_patterns():
        negated = pattern.startswith("!")
        bare = pattern.removeprefix("!").strip("/")
        if any(fnmatch(prefix, bare) for prefix in prefixes):
            ignored = not negated
    return ignored


def _context_files(source: str) -> list[str]:
    path = ROOT / source
    assert path.exists(), f"COPY {source}: not in the build context"
    if path.is_file():
        return [source]
    files = (p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return [str(p.relative_to(ROOT)) for p in files]


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    sources = [src for stage in STAGES for origin, srcs, _ in stage.copies() if not origin
               for src in srcs]  # fmt: skip
    assert PROJECT["readme"] in sources, "pip cannot build without the readme pyproject names"
    for source in sources:
        for file in _context_files(source):
            assert not dockerignored(file), f"{file} is copied but excluded from the context"


LOCAL_FILES = [
    ".venv/bin/python",
    ".git/HEAD",
    "tests/conftest.py",
    "deploy/.env",
    "gateway/__pycache__/cli.cpython-311.pyc",
]


@pytest.mark.parametrize("path", LOCAL_FILES)
def test_build_context_leaves_out_local_files(path: str) -> None:
    assert dockerignored(path)


# --- compose ------------------------------------------------------------------------------

COMPOSE_DATA = yaml.safe_load(COMPOSE.read_text())
SERVICES: dict[str, Any] = COMPOSE_DATA["services"]
_COMPOSE_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def compose_interpolate(text: str, env: Mapping[str, str] = COMPOSE_DOTENV) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error}, with deploy/.env as the environment."""

    def replace(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if name is None:
            return "$"
        value = env.get(name)
        if operator in (":-", "-") and not (value if operator == ":-" else value is not None):
            return argument
        assert value is not None, f"compose needs {name}: add it to COMPOSE_DOTENV and README"
        return value

    return _COMPOSE_VARIABLE.sub(replace, text)


def compose_service(name: str) -> dict[str, Any]:
    """A service with every string interpolated, as ``docker compose config`` shows it."""

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return compose_interpolate(value)
        if isinstance(value, list):
            return [walk(item) for item in value]
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        return value

    return walk(SERVICES[name])


def compose_environment(name: str) -> dict[str, str]:
    environment = compose_service(name).get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def compose_gateway() -> str:
    names = [n for n, s in SERVICES.items() if s.get("build", {}).get("dockerfile")]
    assert len(names) == 1, f"expected one service built from deploy/Dockerfile: {names}"
    return names[0]


def image_config() -> LoadedConfig:
    """deploy/gateway.yaml (baked into the image, mounted by compose) with compose's env."""
    return load_config(IMAGE_CONFIG, env={**IMAGE_ENV, **compose_environment(compose_gateway())})


def go_duration(text: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", text)
    assert "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def test_compose_builds_the_dockerfile_and_tags_the_version() -> None:
    service = SERVICES[compose_gateway()]
    build = service["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT
    assert service["image"] == f"{IMAGE_NAME}:{__version__}"


def test_compose_mounts_the_config_where_the_image_reads_it() -> None:
    mounts = [v.split(":") for v in compose_service(compose_gateway())["volumes"]]
    found = [m for m in mounts if m[1] == IMAGE_ENV["GATEWAY_CONFIG"]]
    assert len(found) == 1, mounts
    source, _, *options = found[0]
    assert (COMPOSE.parent / source).resolve() == IMAGE_CONFIG
    assert options == ["ro"]


def test_compose_config_loads_and_compiles() -> None:
    assert describe_routes(image_config())


def test_compose_redis_url_names_the_redis_service_and_its_password() -> None:
    redis = image_config().config.cache.redis
    assert redis is not None and redis.url is not None
    url = urlsplit(redis.url)
    assert url.hostname in SERVICES, f"{url.hostname} is not a compose service"
    server = compose_service(url.hostname)
    assert server["image"].startswith("redis:")
    command = server["command"]
    assert url.port == int(_option(command, "--port", "6379"))
    assert url.password == _option(command, "--requirepass", None)


def _option(command: list[str], flag: str, default: str | None) -> str | None:
    return command[command.index(flag) + 1] if flag in command else default


def test_compose_upstreams_are_compose_services() -> None:
    for upstream in image_config().config.upstreams.values():
        host = urlsplit(upstream.url).hostname
        assert host in SERVICES, f"upstream host {host} is not a compose service"


def test_compose_grace_period_outlasts_the_drain() -> None:
    shutdown = image_config().config.shutdown
    grace = go_duration(SERVICES[compose_gateway()].get("stop_grace_period", "10s"))
    assert grace > shutdown.readiness_delay + shutdown.drain_timeout


def test_compose_publishes_the_admin_port_on_loopback_only() -> None:
    config = image_config().config
    published = {}
    for mapping in compose_service(compose_gateway())["ports"]:
        *host, container = str(mapping).split(":")
        published[int(container)] = host[0] if len(host) == 2 else "0.0.0.0"
    assert config.listen.port in published
    assert published.get(config.admin.port, "127.0.0.1") == "127.0.0.1"
    if config.admin.port in published:
        assert config.admin.host in ("0.0.0.0", "::"), "a published port must reach the admin"
        assert config.admin.token is not None, "the admin port is published: guard /cache/evict"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_compose_services_are_hardened(name: str) -> None:
    service = SERVICES[name]
    assert service.get("read_only") is True
    assert "ALL" in service.get("cap_drop", [])
    assert "no-new-privileges:true" in service.get("security_opt", [])


def test_compose_variables_are_documented() -> None:
    required = set(re.findall(r"\$\{(\w+):?\?", COMPOSE.read_text()))
    assert required <= set(COMPOSE_DOTENV)
    readme = (DEPLOY / "README.md").read_text()
    assert not [name for name in required if name not in readme]


# --- Kubernetes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    path: Path
    docs: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        found = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.path.name}: no single {kind} {name!r}"
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return self.of_kind("Deployment")

    def selected(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Workloads whose pods carry every label in ``labels``."""
        return [w for w in self.workloads() if labels.items() <= pod_labels(w).items()]


def load_manifest(path: Path) -> Manifest:
    return Manifest(path, tuple(d for d in yaml.safe_load_all(path.read_text()) if d))


def pod_labels(workload: Mapping[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def is_gateway(container: Mapping[str, Any]) -> bool:
    return container["image"].rsplit("/", 1)[-1].split(":")[0] == IMAGE_NAME


def gateway_container(workload: Mapping[str, Any]) -> dict[str, Any] | None:
    return next((c for c in pod_spec(workload)["containers"] if is_gateway(c)), None)


def secret_value(manifest: Manifest, name: str, key: str) -> str:
    """A stand-in for the key's value, distinct per key: the examples' placeholders are all
    alike, and two references to different keys must never compare equal by accident."""
    secret = manifest.named("Secret", name)
    keys = {*secret.get("stringData", {}), *secret.get("data", {})}
    assert key in keys, f"Secret {name} has no key {key!r}"
    if key == "cache-key":  # a sealing key has a shape the loader checks: 32 bytes, base64
        return base64.urlsafe_b64encode(hashlib.sha256(name.encode()).digest()).decode()
    return f"secret-{name}-{key}"


def container_env(manifest: Manifest, container: Mapping[str, Any]) -> dict[str, str]:
    """The environment the kubelet gives the container; a missing Secret key fails here."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = expand(str(entry["value"]), env)
            continue
        source = entry["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[entry["name"]] = secret_value(manifest, ref["name"], ref["key"])
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[entry["name"]] = str(manifest.named("ConfigMap", ref["name"])["data"][ref["key"]])
        else:
            pytest.fail(f"{container['name']}: unsupported valueFrom {source}")
    return env


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in env values, command and args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), text)


def container_port(container: Mapping[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert named, f"container {container['name']} has no port named {port!r}"
    return named[0]


def declares_port(container: Mapping[str, Any], port: int | str) -> bool:
    return any(port in (p["containerPort"], p.get("name")) for p in container.get("ports", []))


@dataclass(frozen=True)
class GatewayPod:
    manifest: Manifest
    workload: dict[str, Any]
    container: dict[str, Any]
    env: dict[str, str]
    loaded: LoadedConfig

    @property
    def spec(self) -> dict[str, Any]:
        return pod_spec(self.workload)


def config_path(container: Mapping[str, Any], env: Mapping[str, str]) -> str:
    args = [*container.get("command", []), *container.get("args", [])]
    for flag in ("-c", "--config"):
        if flag in args:
            return args[args.index(flag) + 1]
    return env.get("GATEWAY_CONFIG", IMAGE_ENV["GATEWAY_CONFIG"])


def mounted_file(manifest: Manifest, workload: Mapping[str, Any], path: str) -> str:
    """The text a container sees at ``path``, followed through its mount to a ConfigMap."""
    container = gateway_container(workload)
    assert container is not None
    for mount in container.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/")
        if mount.get("subPath"):
            relative = mount["subPath"] if path == root else None
        else:
            relative = path[len(root) + 1 :] if path.startswith(root + "/") else None
        if relative is None:
            continue
        assert mount.get("readOnly") is True, f"mount {root} should be readOnly"
        volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"])
        source = volume["configMap"]
        items = {item["path"]: item["key"] for item in source.get("items", [])}
        key = items[relative] if items else relative
        return str(manifest.named("ConfigMap", source["name"])["data"][key])
    pytest.fail(f"nothing is mounted at {path}")


def gateway_pod(path: Path, name: str) -> GatewayPod:
    manifest = load_manifest(path)
    workload = manifest.named("Deployment", name)
    container = gateway_container(workload)
    assert container is not None
    env = {**IMAGE_ENV, **container_env(manifest, container)}
    text = mounted_file(manifest, workload, config_path(container, env))
    loaded = load_config_text(text, f"{path.name}:ConfigMap", env=env)
    return GatewayPod(manifest, workload, container, env, loaded)


def _params() -> dict[str, list[Any]]:
    """Collected once from the files: every workload, container, Service and policy."""
    found: dict[str, list[Any]] = {k: [] for k in ("gateways", "containers", "services",
                                                  "policies", "probes", "manifests")}  # fmt: skip
    found["probes"].append(pytest.param("liveness", urlsplit(healthcheck_url()).path,
                                        id="Dockerfile:HEALTHCHECK"))  # fmt: skip
    for path in MANIFESTS:
        manifest = load_manifest(path)
        found["manifests"].append(pytest.param(path, id=path.stem))
        for workload in manifest.workloads():
            name = workload["metadata"]["name"]
            for container in pod_spec(workload)["containers"]:
                ident = f"{path.stem}:{name}:{container['name']}"
                found["containers"].append(pytest.param(path, name, container["name"], id=ident))
            gateway = gateway_container(workload)
            if gateway is None:
                continue
            found["gateways"].append(pytest.param(path, name, id=f"{path.stem}:{name}"))
            for kind in ("liveness", "readiness"):
                probe = gateway.get(f"{kind}Probe", {}).get("httpGet")
                if probe:
                    ident = f"{path.stem}:{name}:{kind}Probe"
                    found["probes"].append(pytest.param(kind, probe["path"], id=ident))
            annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
            if "prometheus.io/path" in annotations:
                ident = f"{path.stem}:{name}:prometheus.io/path"
                found["probes"].append(
                    pytest.param("metrics", annotations["prometheus.io/path"], id=ident)
                )
        for kind, key in (("Service", "services"), ("NetworkPolicy", "policies")):
            for doc in manifest.of_kind(kind):
                name = doc["metadata"]["name"]
                found[key].append(pytest.param(path, name, id=f"{path.stem}:{name}"))
    return found


PARAMS = _params()


def test_every_example_is_collected() -> None:
    """Guards the parametrised tests below against passing over nothing."""
    assert {p.values[0].stem for p in PARAMS["manifests"]} >= {"sidecar", "standalone"}
    assert {p.values[0].stem for p in PARAMS["gateways"]} >= {"sidecar", "standalone"}
    kinds = {p.values[0] for p in PARAMS["probes"]}
    assert kinds == {"liveness", "readiness", "metrics"}


@pytest.mark.parametrize("path", PARAMS["manifests"])
def test_manifest_documents_are_well_formed(path: Path) -> None:
    manifest = load_manifest(path)
    names = [(doc["kind"], doc["metadata"]["name"]) for doc in manifest.docs]
    assert len(names) == len(set(names)), "a kind/name pair appears twice"
    for doc in manifest.docs:
        assert doc.get("apiVersion"), doc["metadata"]
    for workload in manifest.workloads():
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels(workload).items(), "selector misses its own pods"


@pytest.mark.parametrize(("path", "name"), PARAMS["gateways"])
def test_mounted_config_loads_and_compiles(path: Path, name: str) -> None:
    pod = gateway_pod(path, name)
    assert describe_routes(pod.loaded)


@pytest.mark.parametrize(("path", "name"), PARAMS["gateways"])
def test_gateway_container_runs_the_image_as_built(path: Path, name: str) -> None:
    pod = gateway_pod(path, name)
    assert pod.container["image"].rsplit("/", 1)[-1] == f"{IMAGE_NAME}:{__version__}"
    assert "command" not in pod.container, "a command would bypass the image's ENTRYPOINT"
    uid, gid = image_user()
    context = {**pod.spec.get("securityContext", {}), **pod.container.get("securityContext", {})}
    assert context.get("runAsUser", uid) == uid
    assert context.get("runAsGroup", gid) == gid


@pytest.mark.parametrize(("path", "name"), PARAMS["gateways"])
def test_probes_reach_the_admin_listener(path: Path, name: str) -> None:
    pod = gateway_pod(path, name)
    admin = pod.loaded.config.admin
    assert admin.host in ("0.0.0.0", "::"), "the kubelet probes the pod IP, not loopback"
    assert admin.token is not None, "the admin port is on the pod IP: guard /cache/evict"
    for kind in ("readinessProbe", "livenessProbe"):
        probe = pod.container[kind]["httpGet"]
        assert container_port(pod.container, probe["port"]) == admin.port, kind
        # The paths' meaning is checked against a real admin listener in test_probe_paths.


@pytest.mark.parametrize(("path", "name"), PARAMS["gateways"])
def test_container_ports_are_the_listeners(path: Path, name: str) -> None:
    pod = gateway_pod(path, name)
    config = pod.loaded.config
    ports = {p["name"]: p["containerPort"] for p in pod.container["ports"]}
    assert ports == {"http": config.listen.port, "admin": config.admin.port}


@pytest.mark.parametrize(("path", "name"), PARAMS["gateways"])
def test_grace_period_outlasts_the_drain(path: Path, name: str) -> None:
    pod = gateway_pod(path, name)
    shutdown = pod.loaded.config.shutdown
    grace = pod.spec.get("terminationGracePeriodSeconds", 30)  # Kubernetes' default
    assert grace > shutdown.readiness_delay + shutdown.drain_timeout


@pytest.mark.parametrize(("path", "name"), PARAMS["gateways"])
def test_resources_fit_the_workers(path: Path, name: str) -> None:
    pod = gateway_pod(path, name)
    resources = pod.container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    workers = int(pod.env.get("GATEWAY_WORKERS", "1"))
    assert mebibytes(resources["requests"]["memory"]) >= WORKER_MEMORY_MIB
    assert mebibytes(resources["limits"]["memory"]) >= workers * WORKER_MEMORY_MIB


def mebibytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9, "": 1}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|k|M|G|)", str(quantity))
    assert match, f"unsupported quantity {quantity!r}"
    return float(match[1]) * units[match[2]] / 2**20


@pytest.mark.parametrize(("path", "name"), PARAMS["gateways"])
def test_metrics_are_scraped_from_the_admin_port(path: Path, name: str) -> None:
    pod = gateway_pod(path, name)
    annotations = pod.workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == pod.loaded.config.admin.port


@pytest.mark.parametrize(("path", "name"), PARAMS["gateways"])
def test_upstreams_and_redis_resolve_in_the_manifest(path: Path, name: str) -> None:
    pod = gateway_pod(path, name)
    config = pod.loaded.config
    for upstream in config.upstreams.values():
        url = urlsplit(upstream.url)
        port = url.port or (443 if url.scheme == "https" else 80)
        if url.hostname in ("127.0.0.1", "localhost", "::1"):
            sibling = _loopback_sibling(pod, port)
            sleep = sibling.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
            assert sleep.get("seconds", 0) >= config.shutdown.readiness_delay, (
                f"{sibling['name']} must outlive the gateway's readiness_delay after SIGTERM"
            )
        else:
            _service_backends(pod, url.hostname, port)
    if config.cache.redis is not None and config.cache.redis.url is not None:
        url = urlsplit(config.cache.redis.url)
        redis = _service_backends(pod, url.hostname, url.port or 6379)
        args = [expand(a, container_env(pod.manifest, redis)) for a in redis.get("args", [])]
        assert url.password == _option(args, "--requirepass", None)


def _loopback_sibling(pod: GatewayPod, port: int) -> dict[str, Any]:
    """The other container of the pod that serves ``port``, bound to loopback only: on the
    pod IP it could be called without passing the gateway."""
    for container in pod.spec["containers"]:
        words = [*container.get("command", []), *container.get("args", [])]
        addresses = [w for w in words if w.endswith(f":{port}")]
        if container is not pod.container and addresses:
            assert all(re.search(r"(127\.0\.0\.1|localhost|\[::1\]):\d+$", a) for a in addresses)
            return container
    pytest.fail(f"no container in the pod listens on 127.0.0.1:{port}")


def _service_backends(pod: GatewayPod, host: str | None, port: int) -> dict[str, Any]:
    """The container behind Service ``host``:``port`` (the first DNS label names it)."""
    assert host is not None
    service = pod.manifest.named("Service", host.split(".")[0])
    entry = next((p for p in service["spec"]["ports"] if p["port"] == port), None)
    assert entry is not None, f"Service {host} has no port {port}"
    workloads = pod.manifest.selected(service["spec"]["selector"])
    assert workloads and pod.workload not in workloads, f"Service {host} selects no backend"
    target = entry.get("targetPort", port)
    return next(c for c in pod_spec(workloads[0])["containers"] if declares_port(c, target))


@pytest.mark.parametrize(("path", "workload", "container"), PARAMS["containers"])
def test_containers_are_locked_down(path: Path, workload: str, container: str) -> None:
    manifest = load_manifest(path)
    spec = pod_spec(manifest.named("Deployment", workload))
    item = next(c for c in spec["containers"] if c["name"] == container)
    context = {**spec.get("securityContext", {}), **item.get("securityContext", {})}
    assert context.get("runAsNonRoot") is True
    assert context.get("runAsUser", 1) != 0
    assert context.get("allowPrivilegeEscalation") is False
    assert context.get("readOnlyRootFilesystem") is True
    assert "ALL" in context.get("capabilities", {}).get("drop", [])
    assert not context.get("privileged", False)
    assert spec.get("automountServiceAccountToken") is False
    assert "memory" in item.get("resources", {}).get("limits", {})
    container_env(manifest, item)  # every Secret and ConfigMap reference resolves


@pytest.mark.parametrize(("path", "name"), PARAMS["services"])
def test_services_target_declared_ports(path: Path, name: str) -> None:
    manifest = load_manifest(path)
    service = manifest.named("Service", name)
    workloads = manifest.selected(service["spec"]["selector"])
    assert workloads, f"Service {name} selects no pods"
    for workload in workloads:
        containers = pod_spec(workload)["containers"]
        gateway = gateway_container(workload)
        for entry in service["spec"]["ports"]:
            target = entry.get("targetPort", entry["port"])
            owners = [c for c in containers if declares_port(c, target)]
            assert owners, f"{name}: no container declares port {target!r}"
            if gateway is not None:
                assert owners == [gateway], f"{name} must target the gateway only"
                config = gateway_pod(path, workload["metadata"]["name"]).loaded.config
                assert container_port(gateway, target) == config.listen.port


@pytest.mark.parametrize(("path", "name"), PARAMS["policies"])
def test_network_policies_guard_what_they_select(path: Path, name: str) -> None:
    manifest = load_manifest(path)
    spec = manifest.named("NetworkPolicy", name)["spec"]
    workloads = manifest.selected(spec["podSelector"]["matchLabels"])
    assert workloads, f"NetworkPolicy {name} selects no pods"
    for workload in workloads:
        containers = pod_spec(workload)["containers"]
        gateway = gateway_container(workload)
        for rule in spec.get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            for port in ports:
                assert any(declares_port(c, port) for c in containers), f"{name}: port {port}"
            if rule.get("from"):
                for peer in rule["from"]:
                    if gateway is None:
                        _assert_only_gateways(manifest, peer)
            elif gateway is None:
                pytest.fail(f"{name}: a backend open to everyone; only the gateway may call it")
            else:
                admin = gateway_pod(path, workload["metadata"]["name"]).loaded.config.admin
                numbers = [container_port(gateway, port) for port in ports]
                assert numbers and admin.port not in numbers, f"{name}: admin open to everyone"


def _assert_only_gateways(manifest: Manifest, peer: Mapping[str, Any]) -> None:
    """Backends trust the identity headers the gateway sets: only gateway pods may call."""
    assert set(peer) == {"podSelector"}, f"not a same-namespace pod selector: {peer}"
    callers = manifest.selected(peer["podSelector"].get("matchLabels", {}))
    assert callers, f"{peer} selects no pods"
    assert all(gateway_container(w) for w in callers), f"{peer} lets non-gateway pods in"


# --- probe paths, asked of a real admin listener -------------------------------------------

_PROBE_CONFIG = """
listen: {host: 127.0.0.1, port: 0}
admin: {host: 127.0.0.1, port: 0, token: admin-token}
upstreams: {app: {url: "http://127.0.0.1:9"}}
routes: [{upstream: app, auth: anonymous}]
"""


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _issuer_down() -> str:
    base = f"http://127.0.0.1:{_closed_port()}"
    return (
        _PROBE_CONFIG.replace("auth: anonymous", "auth: required")
        + f"issuers: [{{issuer: '{base}/', keys: {{jwks_uri: '{base}/jwks'}}, audiences: [x]}}]\n"
    )


@pytest.fixture
async def admin_urls() -> AsyncIterator[dict[str, str]]:
    """Admin base URLs of two real gateways: one whose authorization server is down, and
    one with nothing to wait for."""
    gateways = {
        "issuer_down": await start_gateway(load_config_text(_issuer_down())),
        "ready": await start_gateway(load_config_text(_PROBE_CONFIG)),
    }
    try:
        yield {k: f"http://127.0.0.1:{g.admin_port}" for k, g in gateways.items()}
    finally:
        for gateway in gateways.values():
            await gateway.close()


# What each kind of probe must answer: liveness stays 200 while the authorization server is
# down (or the kubelet restarts healthy pods); readiness says 503 until keys are loaded.
EXPECTED_STATUS = {
    "liveness": {"issuer_down": 200, "ready": 200},
    "readiness": {"issuer_down": 503, "ready": 200},
    "metrics": {"issuer_down": 200, "ready": 200},
}


@pytest.mark.parametrize(("kind", "path"), PARAMS["probes"])
async def test_probe_paths(kind: str, path: str, admin_urls: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session:
        for state, expected in EXPECTED_STATUS[kind].items():
            async with session.get(admin_urls[state] + path) as response:
                assert response.status == expected, (state, path)
                if kind == "metrics":
                    assert response.content_type == "text/plain"
