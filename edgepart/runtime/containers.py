"""The containers runtime: a deployment as containers of the one image, through the Docker Engine API.

`edgepart up --runtime docker` plans the deployment as for local processes, then creates, on the
engine `DOCKER_HOST` names (Docker, a remote Docker host, or podman's compatible socket):

- a user-defined network `edgepart-<name>`, on which partitions and the gateway reach each other by
  container name (the partition configs address `http://edgepart-<name>-<task>:9100`);
- a volume `edgepart-<name>` holding the partition configs (the ones the operator mounts from a
  ConfigMap, rendered for these addresses) and the deployment's secret (mode 0400, owned by the
  containers' user), mounted read-only at /etc/edgepart;
- one container per partition and one for the gateway, all from the one image: uid 65532, read-only
  root with a tmpfs /tmp, every capability dropped, no new privileges, CPU and memory limits from the
  plan (`edgepart.planner.resources`, the formula behind the operator's pod requests; a device's
  `cpus` is its cores), a health check on /readyz and a restart policy; the gateway's client port is
  published on 127.0.0.1.

Everything carries the label `edgepart.io/deployment=<name>`, so `status` and `down` need nothing but
the engine: they work from another shell or machine with the same DOCKER_HOST.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import socket
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from edgepart.errors import EdgepartError
from edgepart.spec import DNNDeployment, parse_duration

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

    from edgepart.plan import Plan
    from edgepart.runtime.planning import Planned

__all__ = ["ContainerRun", "ContainerRuntime", "ContainerRuntimeError", "ContainerSettings", "engine_configured"]

LABEL_DEPLOYMENT = "edgepart.io/deployment"
LABEL_ROLE = "edgepart.io/role"
LABEL_PARTITION = "edgepart.io/partition"
LABEL_URL = "edgepart.io/gateway-url"
LABEL_RUNTIME = "edgepart.io/runtime"
PARTITION_PORT = 9100
GATEWAY_INTERNAL_PORT = 9000
GATEWAY_CLIENT_PORT = 8080
DATA_DIR = "/etc/edgepart"
SECRET_PATH = f"{DATA_DIR}/secret"
USER = 65532
_NAME = re.compile(r"[^a-z0-9_.-]+")


class ContainerRuntimeError(EdgepartError, RuntimeError):
    """A deployment could not be started, found or stopped as containers."""


@dataclass(frozen=True)
class ContainerSettings:
    """How containers are run; the defaults are what `edgepart up --runtime docker` uses."""

    image: str = field(default_factory=lambda: os.environ.get("EDGEPART_IMAGE", "localhost/edgepart:dev"))
    publish_host: str = "127.0.0.1"  # where the gateway's client port is published
    restart: str = "on-failure"  # Docker restart policy of every container
    restart_retries: int = 5
    cpu_share: float = 0.8  # of a device's cores, split among its partitions (as for pods)
    tmp_size: str = "256m"  # the tmpfs at /tmp
    health_interval_s: float = 5.0
    health_start_s: float = 300.0  # loading a slice can take a while on a small CPU share


def engine_configured() -> bool:
    """Whether an engine is named (DOCKER_HOST) or Docker's default socket exists: `status` asks it then."""
    return bool(os.environ.get("DOCKER_HOST")) or Path("/var/run/docker.sock").exists()


def _client() -> docker.DockerClient:
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as err:
        where = os.environ.get("DOCKER_HOST") or "the default socket /var/run/docker.sock"
        raise ContainerRuntimeError(f"no container engine answers at {where} (set DOCKER_HOST, e.g. "
                                    f"unix:///run/podman/podman.sock): {err}") from None
    return client


def resource_name(deployment: str, *parts: str) -> str:
    """`edgepart-<deployment>[-part...]`, in the characters container and network names allow."""
    text = "-".join(["edgepart", deployment, *parts]).lower()
    return _NAME.sub("-", text).strip("-.")


def _tar(files: Mapping[str, tuple[bytes, int]]) -> bytes:
    """A tar of files (name -> (content, mode)) owned by the containers' user."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        directories = sorted({str(Path(n).parent) for n in files if "/" in n})
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
            tar.addfile(info)
        for name, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(content), mode, USER, USER, int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _health(port: int, settings: ContainerSettings) -> dict[str, Any]:
    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/readyz', timeout=3)"
    return {"test": ["CMD", "python", "-c", probe], "interval": int(settings.health_interval_s * 1e9),
            "timeout": int(3e9), "retries": 3, "start_period": int(settings.health_start_s * 1e9)}


@dataclass
class ContainerRun:
    """One deployment as the engine reports it."""

    name: str
    gateway_url: str
    containers: dict[str, str]  # partition id or "gateway" -> container status ("running", "exited", ...)
    restarts: dict[str, int]
    ready: bool = False
    partitions: list[dict[str, Any]] = field(default_factory=list)
    detail: str | None = None
    plan: Plan | None = None  # set by `up`


class ContainerRuntime:
    """Start, inspect and stop deployments as containers on the engine DOCKER_HOST names."""

    def __init__(self, settings: ContainerSettings | None = None, *, echo: Callable[[str], None] | None = None,
                 client: docker.DockerClient | None = None):
        self.settings = settings or ContainerSettings()
        self._echo = echo or (lambda message: None)
        self._client = client

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = _client()
        return self._client

    def _labels(self, name: str, role: str, partition: str = "") -> dict[str, str]:
        labels = {LABEL_DEPLOYMENT: name, LABEL_ROLE: role, LABEL_RUNTIME: "docker"}
        if partition:
            labels[LABEL_PARTITION] = partition
        return labels

    def containers(self, name: str | None = None) -> list[Container]:
        selector = f"{LABEL_DEPLOYMENT}={name}" if name else LABEL_DEPLOYMENT
        return list(self.client.containers.list(all=True, filters={"label": [selector, f"{LABEL_RUNTIME}=docker"]}))

    def names(self) -> list[str]:
        return sorted({c.labels[LABEL_DEPLOYMENT] for c in self.containers()})

    # ------------------------------------------------------------ up

    async def up(self, deployment: DNNDeployment, *, port: int = 8080, plan: Plan | None = None,
                 ready_timeout_s: float = 300.0, base: Path | None = None) -> ContainerRun:
        """Plan (unless `plan` is given), create the network, the volume and every container; wait until ready."""
        from edgepart.runtime.planning import plan_deployment

        name = deployment.metadata.name
        if self.containers(name):
            raise ContainerRuntimeError(f"deployment {name} is already up as containers; run `edgepart down "
                                        f"{name}` first")
        self._check_image()
        spec = deployment.spec
        names = ", ".join(m.name for _, m in spec.model_specs())
        self._echo(f"planning {names} on {len(spec.cluster().devices)} devices (solver {spec.solver})")
        planned = await asyncio.to_thread(plan_deployment, spec, plan=plan, base=base)
        for entry in planned.plan.models:
            if entry.ref.weights or ".py:" in entry.ref.name or entry.ref.name.endswith(".py"):
                raise ContainerRuntimeError(
                    f"model {entry.ref.name}: the docker runtime runs zoo models and installed packages "
                    "(package.module:factory) with seeded weights; files on this machine are not in the image")
        host_port = port or _free_port(self.settings.publish_host)
        url = f"http://{self.settings.publish_host}:{host_port}"
        try:
            await asyncio.to_thread(self._create, deployment, planned, host_port, url)
            await self._wait_ready(name, url, ready_timeout_s)
        except BaseException:
            await asyncio.to_thread(self._remove, name)
            raise
        run = (await self.status(name))[0]
        run.plan = planned.plan
        return run

    def _check_image(self) -> None:
        import docker

        try:
            self.client.images.get(self.settings.image)
        except docker.errors.ImageNotFound:
            raise ContainerRuntimeError(f"image {self.settings.image} is not on the engine: build it (`make image`) "
                                        "or name another with --image / EDGEPART_IMAGE") from None

    def _create(self, deployment: DNNDeployment, planned: Planned, host_port: int, url: str) -> None:
        from edgepart.partition_service.auth import new_secret
        from edgepart.partition_service.config import render_configs
        from edgepart.planner.resources import partition_resources

        name = deployment.metadata.name
        spec = deployment.spec
        cluster = spec.cluster()
        plan = planned.plan
        declared = {d.name: d.cpus for d in cluster.devices}
        host_cpus = float(self.client.info().get("NCPU") or os.cpu_count() or 1)
        cores: dict[str, float] = {d: float(declared.get(d) or host_cpus) for d in plan.devices}
        addresses = {t.id: f"http://{resource_name(name, t.id)}:{PARTITION_PORT}" for t in plan.tasks}
        gateway = resource_name(name, "gateway")
        configs = render_configs(
            plan, name, addresses, f"http://{gateway}:{GATEWAY_INTERNAL_PORT}", client_port=GATEWAY_CLIENT_PORT,
            secret_file=SECRET_PATH, bind_host="0.0.0.0", gateway_host="0.0.0.0", gateway_internal_host="0.0.0.0",
            threads={d: max(1, int(c)) for d, c in cores.items()},
            request_timeout_s=parse_duration(spec.request_timeout),
            admission=spec.admission, peer_timeout_s=parse_duration(spec.peer_timeout),
            gateway_device=cluster.master_name,
            exact_kernels=spec.exact_kernels)
        files = {f"configs/{c.partition}.json": (c.model_dump_json(indent=2).encode(), 0o444)
                 for c in configs.partitions}
        files["configs/gateway.json"] = (configs.gateway.model_dump_json(indent=2).encode(), 0o444)
        files["secret"] = ((new_secret() + "\n").encode(), 0o400)

        labels = self._labels(name, "network")
        self._echo(f"creating network {resource_name(name)}, volume {resource_name(name)} and "
                   f"{len(plan.tasks) + 1} containers from {self.settings.image}")
        network = self.client.networks.create(resource_name(name), driver="bridge", labels=labels)
        volume = self.client.volumes.create(resource_name(name), labels=self._labels(name, "data"))
        self._fill_volume(volume.name, files, name)

        on_device: dict[str, int] = {}
        for task in plan.tasks:
            on_device[task.device] = on_device.get(task.device, 0) + 1
        for task in plan.tasks:
            need = partition_resources(planned.graphs[task.model], task, cores[task.device], on_device[task.device],
                                       self.settings.cpu_share)
            self._run(resource_name(name, task.id), self._labels(name, "partition", task.id), network.name,
                      volume.name, "serve-partition", f"{DATA_DIR}/configs/{task.id}.json", PARTITION_PORT,
                      cpus=need.cpu, memory=need.memory_limit, threads=max(1, int(cores[task.device])))
        self._run(gateway, self._labels(name, "gateway") | {LABEL_URL: url}, network.name, volume.name,
                  "serve-gateway", f"{DATA_DIR}/configs/gateway.json", GATEWAY_CLIENT_PORT,
                  publish={f"{GATEWAY_CLIENT_PORT}/tcp": (self.settings.publish_host, host_port)})

    def _fill_volume(self, volume: str, files: Mapping[str, tuple[bytes, int]], name: str) -> None:
        """Write files into the volume through a container that is created, never started."""
        helper = self.client.containers.create(
            self.settings.image, command=["--help"], name=resource_name(name, "fill"), user="0:0",
            volumes={volume: {"bind": DATA_DIR, "mode": "rw"}}, labels=self._labels(name, "fill"),
            network_disabled=True)
        try:
            if not helper.put_archive(DATA_DIR, _tar(files)):
                raise ContainerRuntimeError(f"could not write the configs into volume {volume}")
        finally:
            helper.remove(force=True)

    def _run(self, container: str, labels: dict[str, str], network: str, volume: str, role: str, config: str,
             port: int, *, cpus: float | None = None, memory: int | None = None, threads: int = 1,
             publish: dict[str, tuple[str, int]] | None = None) -> None:
        settings = self.settings
        limits: dict[str, Any] = {}
        if cpus is not None:
            limits["nano_cpus"] = max(10_000_000, int(cpus * 1e9))
        if memory is not None:
            limits["mem_limit"] = memory
        self.client.containers.run(
            settings.image, command=[role], name=container, hostname=container, detach=True, labels=labels,
            environment={"EDGEPART_CONFIG": config, "EDGEPART_LOG_LEVEL": "info", "OMP_NUM_THREADS": str(threads),
                         "MKL_NUM_THREADS": str(threads)},
            user=f"{USER}:{USER}", read_only=True, tmpfs={"/tmp": f"rw,size={settings.tmp_size}"},
            cap_drop=["ALL"], security_opt=["no-new-privileges"],
            volumes={volume: {"bind": DATA_DIR, "mode": "ro"}}, network=network,
            restart_policy={"Name": settings.restart, "MaximumRetryCount": settings.restart_retries},
            healthcheck=_health(port, settings), ports=publish or {}, **limits)

    async def _wait_ready(self, name: str, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        async with httpx.AsyncClient(trust_env=False, timeout=5.0) as http:
            while True:
                for container in await asyncio.to_thread(self.containers, name):
                    if container.status in ("exited", "dead"):
                        logs = container.logs(tail=25).decode(errors="replace")
                        raise ContainerRuntimeError(f"container {container.name} exited while starting; its log:\n"
                                                    f"{logs}")
                try:
                    response = await http.get(url + "/v1/status")
                    if response.status_code == 200:
                        body = response.json()
                        if body.get("ready"):
                            return
                        failed = [p for p in body["partitions"] if p.get("state") == "failed"]
                        if failed:
                            raise ContainerRuntimeError(f"partition {failed[0]['id']} failed to load: "
                                                        f"{failed[0]['detail']}")
                        last = "; ".join(f"{p['id']}: {p['detail']}" for p in body["partitions"] if not p["ready"])
                except httpx.HTTPError as err:
                    last = f"gateway: {type(err).__name__}"
                if time.monotonic() > deadline:
                    raise ContainerRuntimeError(f"deployment {name} not ready after {timeout_s:g} s: {last}")
                await asyncio.sleep(0.5)

    # ------------------------------------------------------------ status / down

    async def status(self, name: str | None = None) -> list[ContainerRun]:
        grouped: dict[str, list[Container]] = {}
        for container in await asyncio.to_thread(self.containers, name):
            grouped.setdefault(container.labels[LABEL_DEPLOYMENT], []).append(container)
        if name is not None and name not in grouped:
            raise ContainerRuntimeError(f"no deployment {name!r} runs as containers on this engine; up: "
                                        f"{sorted(grouped) or 'none'}")
        runs = []
        async with httpx.AsyncClient(trust_env=False, timeout=5.0) as http:
            for deployment, containers in sorted(grouped.items()):
                ident = {c.name: c.labels.get(LABEL_PARTITION) or c.labels.get(LABEL_ROLE, "?") for c in containers}
                url = next((c.labels.get(LABEL_URL, "") for c in containers if c.labels.get(LABEL_URL)), "")
                run = ContainerRun(
                    name=deployment, gateway_url=url,
                    containers={ident[c.name]: c.status for c in containers},
                    restarts={ident[c.name]: int(c.attrs.get("RestartCount") or 0) for c in containers})
                try:
                    response = await http.get(url + "/v1/status")
                    response.raise_for_status()
                    run.partitions = response.json()["partitions"]
                except (httpx.HTTPError, ValueError, KeyError) as err:
                    run.detail = f"gateway {url} does not answer: {type(err).__name__}"
                run.ready = (bool(run.partitions) and all(p["ready"] for p in run.partitions)
                             and all(s == "running" for s in run.containers.values()))
                runs.append(run)
        return runs

    async def down(self, name: str | None = None) -> list[str]:
        """Remove one deployment's (or the only one's) containers, network and volume; the names removed."""
        names = [name] if name is not None else await asyncio.to_thread(self.names)
        if name is None and len(names) > 1:
            raise ContainerRuntimeError(f"several deployments run as containers ({', '.join(names)}); name the "
                                        "one to stop")
        if name is not None and not await asyncio.to_thread(self.containers, name):
            raise ContainerRuntimeError(f"no deployment {name!r} runs as containers on this engine")
        for each in names:
            await asyncio.to_thread(self._remove, each)
        return names

    def _remove(self, name: str) -> None:
        import docker

        for container in self.containers(name):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for network in self.client.networks.list(filters={"label": f"{LABEL_DEPLOYMENT}={name}"}):
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()
        for volume in self.client.volumes.list(filters={"label": f"{LABEL_DEPLOYMENT}={name}"}):
            with contextlib.suppress(docker.errors.NotFound):
                volume.remove(force=True)
