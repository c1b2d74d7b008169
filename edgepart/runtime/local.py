"""The embedded runtime: a deployment as local processes (optionally inside emulated devices).

`up` plans the deployment, renders the same partition configs the operator
mounts into pods, starts the gateway and one process per partition
(`python -m edgepart.partition_service ROLE`, config in EDGEPART_CONFIG), waits
until every one is ready and records everything under the run directory::

    .edgepart/run/<name>/state.json      pids, URLs, ports, emulation resources
    .edgepart/run/<name>/plan.json
    .edgepart/run/<name>/secret          the deployment's secret (mode 0600, new on every `up`)
    .edgepart/run/<name>/configs/*.json  gateway.json, <partition>.json
    .edgepart/run/<name>/logs/*.log

so `status` and `down` work from another shell. Without emulation every
process listens on 127.0.0.1 on sockets the runtime binds and hands over (no
port races): each partition one (internal), the gateway two (its clients' port
and its internal port). With emulation each partition runs in its device's
namespace and CPU group; the gateway runs in the master device's namespace,
serving its internal port there and its clients on a socket bound on the host's
127.0.0.1:PORT, which is the URL clients use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict

from edgepart.errors import EdgepartError
from edgepart.runtime.calibration_cache import Calibration
from edgepart.runtime.emulate import (
    NETNS_DIR,
    EmulationError,
    Testbed,
    create_testbed,
    destroy_testbed,
    enter,
    support_problems,
    used_indexes,
)
from edgepart.spec import DNNDeployment, parse_duration

if TYPE_CHECKING:  # torch-heavy; `status` and `down` start fast without them
    from edgepart.partition_service.config import ConnectionLimits, DeploymentConfigs
    from edgepart.plan import Plan
    from edgepart.runtime.planning import Planned

__all__ = ["ExcludedDevice", "LocalRuntime", "LocalRuntimeError", "ProcessState", "Replan", "RunState", "RunStatus",
           "default_root"]

GATEWAY_INTERNAL_PORT = 9000  # inside an emulated master device
SECRET_FILE = "secret"
DEPLOYMENT_FILE = "deployment.json"  # the deployment as planned (devices costed): what a re-plan starts from
PARTITION_BASE_PORT = 9100  # inside an emulated device: 9100, 9101, ...
_MARK = "edgepart.partition_service"


class LocalRuntimeError(EdgepartError, RuntimeError):
    """A local deployment could not be started, found or stopped."""


def default_root() -> Path:
    return Path(os.environ.get("EDGEPART_RUN_DIR", ".edgepart/run"))


class ProcessState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str  # partition id, "gateway", or a ring worker's device
    role: Literal["partition", "gateway", "ring", "dispatcher", "worker"]
    device: str
    pid: int
    url: str  # where the process serves (inside its namespace when emulated)
    config: str
    log: str
    netns: str | None = None
    cgroup: str | None = None
    restarts: int = 0  # by the supervisor or `edgepart restart`, as a Pod's restartCount
    last_exit: int | None = None  # the exit code (negative: the signal) before the last restart, when known


class ExcludedDevice(BaseModel):
    """A device the deployment was re-planned without (as the operator's status.excludedNodes)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    reason: str  # DeviceUnreachable
    message: str
    since: float  # wall-clock time it was left out


class Replan(BaseModel):
    """The last re-plan over the remaining devices, or the attempt that found no feasible plan."""

    model_config = ConfigDict(extra="forbid")

    generation: int  # of the plan running after it (the first plan is generation 1)
    at: float
    lost: list[str]  # the devices lost this time (`RunState.excluded` holds every one)
    feasible: bool
    reason: str
    devices: list[str] = []  # the new plan's devices
    master: str | None = None
    plan_hash: str | None = None


class RunState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    directory: str
    cwd: str
    started_at: float
    status: Literal["starting", "ready"] = "starting"
    gateway_url: str  # what clients use
    port: int
    emulated: bool
    testbed: Testbed | None = None
    processes: list[ProcessState] = []
    model: str
    solver: str
    how: str
    predicted_latency_s: float | None = None
    predicted_throughput_per_s: float | None = None
    ring: dict[str, str] = {}  # a deployment with sources: each ring worker's URL from this host
    supervisor_pid: int | None = None  # the process restarting partitions that exit (`edgepart up`)
    calibration: Calibration | None = None  # `up --emulate`: what the devices were costed with
    device_timeout_s: float | None = None  # a device down this long is left out and the deployment re-planned
    generation: int = 1  # of the plan running: one more on every re-plan
    plan_hash: str | None = None
    excluded: list[ExcludedDevice] = []
    replan: Replan | None = None

    def process(self, ident: str) -> ProcessState:
        for proc in self.processes:
            if proc.id == ident:
                return proc
        raise LocalRuntimeError(f"deployment {self.name} has no partition {ident!r}; it has "
                                f"{[p.id for p in self.processes if p.role == 'partition']}")


class RunStatus(BaseModel):
    name: str
    gateway_url: str
    ready: bool
    emulated: bool
    alive: dict[str, bool]
    partitions: list[dict[str, Any]]
    detail: str | None = None
    predicted_latency_s: float | None = None
    manager: dict[str, Any] | None = None  # accuracy-aware data partitioning: the resource manager's state
    restarts: dict[str, int] = {}
    supervised: bool = False
    capped: bool = True  # emulated: every live partition runs in its device's CPU cgroup
    calibration: Calibration | None = None
    generation: int = 1
    plan_hash: str | None = None
    device_timeout_s: float | None = None
    excluded: list[ExcludedDevice] = []
    replan: Replan | None = None


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    return host, int(port)


def _free_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise LocalRuntimeError(f"cannot listen on {host}:{port}: {err.strerror} (pass another --port)") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _tail(path: str, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _in_cgroup(pid: int, cgroup: str) -> bool:
    """True when `pid` runs in the CPU cgroup directory `cgroup` (v1 `cpu` controller or the v2 tree)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return False
    tail = "/" + cgroup.split("/sys/fs/cgroup/", 1)[-1].split("/", 1)[-1] if "/sys/fs/cgroup/" in cgroup else cgroup
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (not controllers or "cpu" in controllers.split(",")) and (path == tail or cgroup.endswith(path)):
            return path not in ("", "/")
    return False


def plan_hash(plan: Plan) -> str:
    """A short digest of the plan, so `status` shows when a re-plan changed it."""
    return hashlib.sha256(plan.to_json(indent=None).encode()).hexdigest()[:10]


def _supervisor_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return b"edgepart.runtime.supervise" in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"


def _is_ours(pid: int, config: str) -> bool:
    """True when `pid` is a live data-plane process started with `config` (pids get reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except (OSError, IndexError):
        return False
    return _MARK.encode() in cmdline and f"EDGEPART_CONFIG={config}".encode() in environ.split(b"\0")


class LocalRuntime:
    """Start, inspect and stop local deployments under `root` (default .edgepart/run)."""

    def __init__(self, root: Path | None = None, *, echo: Callable[[str], None] | None = None):
        self.root = (root or default_root()).resolve()
        self._echo = echo or (lambda message: None)
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._connection: ConnectionLimits | None = None

    # ------------------------------------------------------------ state files

    def _state_path(self, name: str) -> Path:
        return self.root / name / "state.json"

    def load(self, name: str) -> RunState | None:
        path = self._state_path(name)
        if not path.is_file():
            return None
        try:
            return RunState.model_validate_json(path.read_text())
        except ValueError as err:
            raise LocalRuntimeError(f"{path} is not a run state file: {err}") from None

    def _save(self, state: RunState) -> None:
        path = self._state_path(state.name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(state.model_dump_json(indent=2))
        tmp.replace(path)

    def runs(self) -> list[RunState]:
        if not self.root.is_dir():
            return []
        found = (self.load(p.name) for p in sorted(self.root.iterdir()) if (p / "state.json").is_file())
        return [s for s in found if s is not None]

    def _pick(self, name: str | None) -> list[RunState]:
        if name is not None:
            state = self.load(name)
            if state is None:
                known = [s.name for s in self.runs()]
                raise LocalRuntimeError(f"no deployment {name!r} is up here ({self.root}); up: {known or 'none'}")
            return [state]
        return self.runs()

    # ------------------------------------------------------------ processes

    def alive(self, proc: ProcessState) -> bool:
        child = self._children.get(proc.pid)
        if child is not None:
            return child.poll() is None
        return _is_ours(proc.pid, proc.config)

    def _exit_code(self, proc: ProcessState) -> int | None:
        child = self._children.get(proc.pid)
        if child is not None:
            return child.poll()
        return None if _is_ours(proc.pid, proc.config) else -1

    def _spawn(self, state: RunState, ident: str, role: Literal["partition", "gateway", "ring", "dispatcher", "worker"],
               device: str, url: str,
               config: Path, *, threads: int = 1, sockets: tuple[socket.socket, ...] = (),
               netns: str | None = None, cgroup: str | None = None, cap_later: bool = False) -> ProcessState:
        """Start one process; with `cap_later` it joins its CPU cgroup only once ready (`_apply_caps`)."""
        log = Path(state.directory) / "logs" / f"{ident}.log"
        env = {
            **os.environ, "EDGEPART_CONFIG": str(config), "EDGEPART_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "EDGEPART_LISTEN_FDS": ",".join(str(s.fileno()) for s in sockets),
        }
        join_cgroup = None if cap_later else cgroup
        preexec = enter(netns, join_cgroup) if (netns or join_cgroup) else None
        with open(log, "ab") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", _MARK, role], env=env, cwd=state.cwd, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                pass_fds=tuple(s.fileno() for s in sockets), preexec_fn=preexec,
            )
        self._children[child.pid] = child
        return ProcessState(id=ident, role=role, device=device, pid=child.pid, url=url, config=str(config),
                            log=str(log), netns=netns, cgroup=cgroup)

    async def _stop_processes(self, procs: list[ProcessState], grace_s: float = 10.0) -> None:
        targets = [p for p in procs if self.alive(p)]
        for proc in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(self.alive(p) for p in targets):
            await asyncio.sleep(0.05)
        for proc in targets:
            if self.alive(proc):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        for proc in procs:
            child = self._children.pop(proc.pid, None)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(child.wait, 10)

    # ------------------------------------------------------------ up

    async def up(self, deployment: DNNDeployment, *, port: int = 8080, emulate: bool = False,
                 plan: Plan | None = None, ready_timeout_s: float = 300.0, base: Path | None = None,
                 connection: ConnectionLimits | None = None, calibration: Calibration | None = None,
                 device_timeout_s: float | None = 30.0) -> RunState:
        """Plan (unless `plan` is given), start every process, wait until all are ready.

        `connection`: the limits every process enforces on its connections (default: `ConnectionLimits()`).
        `calibration`: what `deployment`'s devices were calibrated with (`device_calibration`), kept for `status`.
        `device_timeout_s`: the supervisor re-plans without a device down this long (None: never)."""
        name = deployment.metadata.name
        spec = deployment.spec
        if spec.variants is not None:  # accuracy-aware data partitioning: a dispatcher and variant workers
            from edgepart.runtime.variants_local import up_variants

            return await up_variants(self, deployment, port=port, emulate=emulate, ready_timeout_s=ready_timeout_s,
                                     base=base)
        existing = self.load(name)
        if existing is not None:
            if any(self.alive(p) for p in existing.processes):
                raise LocalRuntimeError(f"deployment {name} is already up (gateway {existing.gateway_url}); "
                                        f"run `edgepart down {name}` first")
            await self.teardown(existing)
        from edgepart.plan import save_plan
        from edgepart.runtime.planning import plan_deployment, with_cpu_speeds

        if emulate:
            problems = support_problems()
            if problems:
                raise EmulationError("; ".join(problems))
            # an emulated device runs under its `cpus` quota: cost it as that fraction of a core
            deployment = with_cpu_speeds(deployment)
            spec = deployment.spec
        cluster = spec.cluster()
        if spec.sources:  # several data sources: ring workers instead of a plan (runtime/ring.py)
            return await self._up_ring(deployment, emulate, ready_timeout_s, base or Path.cwd(), connection,
                                       calibration)
        names = ", ".join(m.name for _, m in spec.model_specs())
        self._echo(f"planning {names} on {len(cluster.devices)} devices (solver {spec.solver})")
        planned = await asyncio.to_thread(plan_deployment, spec, plan=plan, base=base)
        from edgepart.partition_service.auth import write_secret

        directory = self.root / name
        for sub in ("logs", "configs"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        write_secret(directory / SECRET_FILE)
        save_plan(planned.plan, directory / "plan.json")
        (directory / DEPLOYMENT_FILE).write_text(deployment.model_dump_json(by_alias=True, exclude_none=True))
        predicted = planned.plan.predicted
        state = RunState(
            name=name, directory=str(directory), cwd=str(base or Path.cwd()), started_at=time.time(),
            gateway_url="", port=port, emulated=emulate, model=", ".join(m.name for m in planned.plan.models),
            solver=planned.plan.solver,
            how=planned.how, predicted_latency_s=predicted.latency_s if predicted else None,
            predicted_throughput_per_s=predicted.throughput_per_s if predicted else None, calibration=calibration,
            device_timeout_s=device_timeout_s, plan_hash=plan_hash(planned.plan),
        )
        try:
            self._connection = connection
            if emulate:
                await self._up_emulated(deployment, planned, state)
            else:
                await self._up_local(deployment, planned, state)
            self._echo(f"started {len(state.processes)} processes; waiting until every partition is ready")
            await self._wait_ready(state, ready_timeout_s)
            self._apply_caps(state)
        except BaseException:
            await self.teardown(state)
            raise
        state.status = "ready"
        self._save(state)
        return state

    async def _up_ring(self, deployment: DNNDeployment, emulate: bool, ready_timeout_s: float, base: Path,
                       connection: ConnectionLimits | None, calibration: Calibration | None = None) -> RunState:
        from edgepart.partition_service.auth import write_secret
        from edgepart.runtime.ring import up_ring, wait_ring_ready

        spec = deployment.spec
        name = deployment.metadata.name
        directory = self.root / name
        for sub in ("logs", "configs"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        write_secret(directory / SECRET_FILE)
        state = RunState(name=name, directory=str(directory), cwd=str(base), started_at=time.time(), gateway_url="",
                         port=0, emulated=emulate, model=spec.first_model.name, solver=f"ring {spec.scheduler}",
                         how=f"{len(spec.sources)} sources on a ring of {len(spec.ring_order())} workers, "
                             f"{spec.scheduler}", calibration=calibration)
        self._echo(f"starting {len(spec.ring_order())} ring workers ({spec.scheduler}, sources "
                   f"{', '.join(s.device for s in spec.sources)})")
        try:
            self._connection = connection
            await up_ring(self, deployment, state, emulate=emulate, base=base)
            await wait_ring_ready(self, state, ready_timeout_s)
            self._apply_caps(state)
        except BaseException:
            await self.teardown(state)
            raise
        state.status = "ready"
        self._save(state)
        return state

    def _render(self, state: RunState, deployment: DNNDeployment, planned: Planned, addresses: dict[str, str],
                gateway_url: str, *, hosts: dict[str, str] | None = None, gateway_host: str = "127.0.0.1",
                gateway_internal_host: str = "127.0.0.1", emulate: bool = False) -> DeploymentConfigs:
        from edgepart.partition_service.config import render_configs

        spec = deployment.spec
        cluster = spec.cluster()
        devices = {d.name: d for d in cluster.devices}

        def delay(a: str, b: str) -> float:
            for link in spec.network.links:
                if {link.source, link.target} == {a, b} and link.latency is not None:
                    return parse_duration(link.latency)
            return parse_duration(spec.network.latency)

        threads = {name: max(1, int(d.cpus)) if d.cpus else 1 for name, d in devices.items()}
        return render_configs(
            planned.plan, deployment.metadata.name, addresses, gateway_url, client_port=state.port,
            secret_file=str(Path(state.directory) / SECRET_FILE), hosts=hosts, bind_host="127.0.0.1",
            gateway_host=gateway_host, gateway_internal_host=gateway_internal_host, threads=threads,
            connection=self._connection, request_timeout_s=parse_duration(spec.request_timeout),
            admission=spec.admission, peer_timeout_s=parse_duration(spec.peer_timeout),
            gateway_device=cluster.master_name, link_delay=delay if emulate else None,
            exact_kernels=spec.exact_kernels,
        )

    def _write_configs(self, state: RunState, configs: DeploymentConfigs) -> dict[str, Path]:
        directory = Path(state.directory) / "configs"
        paths = {}
        for config in configs.partitions:
            paths[config.partition] = directory / f"{config.partition}.json"
            paths[config.partition].write_text(config.model_dump_json(indent=2))
        paths["gateway"] = directory / "gateway.json"
        paths["gateway"].write_text(configs.gateway.model_dump_json(indent=2))
        return paths

    async def _up_local(self, deployment: DNNDeployment, planned: Planned, state: RunState) -> None:
        gateway_sock = _free_socket("127.0.0.1", state.port)
        internal_sock = _free_socket()
        sockets = {t.id: _free_socket() for t in planned.plan.tasks}
        try:
            state.port = gateway_sock.getsockname()[1]
            state.gateway_url = f"http://127.0.0.1:{state.port}"
            internal = f"http://127.0.0.1:{internal_sock.getsockname()[1]}"
            addresses = {pid: f"http://127.0.0.1:{s.getsockname()[1]}" for pid, s in sockets.items()}
            configs = self._render(state, deployment, planned, addresses, internal)
            paths = self._write_configs(state, configs)
            self._save(state)
            for config in configs.partitions:
                state.processes.append(self._spawn(
                    state, config.partition, "partition", config.device, addresses[config.partition],
                    paths[config.partition], threads=config.threads, sockets=(sockets[config.partition],)))
                self._save(state)
            state.processes.append(self._spawn(state, "gateway", "gateway", configs.gateway.deployment,
                                               state.gateway_url, paths["gateway"],
                                               sockets=(gateway_sock, internal_sock)))
            self._save(state)
        finally:
            gateway_sock.close()
            internal_sock.close()
            for sock in sockets.values():
                sock.close()

    async def _up_emulated(self, deployment: DNNDeployment, planned: Planned, state: RunState) -> None:
        spec = deployment.spec
        cluster = spec.cluster()
        taken = used_indexes() | {s.testbed.index for s in self.runs() if s.testbed is not None}
        index = next((i for i in range(255) if i not in taken), None)
        if index is None:
            raise EmulationError("all 255 testbed subnets 10.123.K.0/24 are in use")
        used = set(planned.plan.devices) | {cluster.master_name}
        devices = [d for d in cluster.devices if d.name in used]
        gateway_sock = _free_socket("127.0.0.1", state.port)
        try:
            state.port = gateway_sock.getsockname()[1]
            state.gateway_url = f"http://127.0.0.1:{state.port}"
            self._echo(f"emulating {len(devices)} devices: network namespaces on 10.123.{index}.0/24, "
                       f"{spec.network.bandwidth} tbf caps, {spec.network.latency} latency in userspace, "
                       "cgroup CPU quotas (v1 or v2, as the host has)")
            if spec.network.medium == "shared":
                self._echo("note: a shared medium is emulated as a switched network (a capped link per device)")
            testbed = await asyncio.to_thread(create_testbed, state.name, index, devices, spec.network)
            state.testbed = testbed
            self._save(state)
            next_port: dict[str, int] = {}
            addresses, hosts = {}, {}
            for task in planned.plan.tasks:
                dev = testbed.device(task.device)
                port = next_port.get(dev.name, PARTITION_BASE_PORT)
                next_port[dev.name] = port + 1
                addresses[task.id] = f"http://{dev.address}:{port}"
                hosts[task.id] = dev.address
            master = testbed.device(cluster.master_name)
            internal = f"http://{master.address}:{GATEWAY_INTERNAL_PORT}"
            configs = self._render(state, deployment, planned, addresses, internal, hosts=hosts,
                                   gateway_host="127.0.0.1", gateway_internal_host=master.address, emulate=True)
            paths = self._write_configs(state, configs)
            for config in configs.partitions:
                dev = testbed.device(config.device)
                state.processes.append(self._spawn(
                    state, config.partition, "partition", config.device, addresses[config.partition],
                    paths[config.partition], threads=config.threads, netns=dev.netns, cgroup=dev.cgroup,
                    cap_later=True))
                self._save(state)
            state.processes.append(self._spawn(state, "gateway", "gateway", master.name, internal, paths["gateway"],
                                               sockets=(gateway_sock,), netns=master.netns))
            self._save(state)
        finally:
            gateway_sock.close()

    def _apply_caps(self, state: RunState) -> None:
        """Move every partition into its device's CPU cgroup (all its threads move with it).

        Loading and warming run uncapped so an emulated 0.2-CPU device does not take minutes to start;
        from readiness on, every request runs under the device's quota.
        """
        for proc in state.processes:
            if proc.cgroup is not None and self.alive(proc):
                try:
                    (Path(proc.cgroup) / "cgroup.procs").write_text(str(proc.pid))
                except OSError as err:
                    raise EmulationError(f"cannot move {proc.id} (pid {proc.pid}) into {proc.cgroup}: "
                                         f"{err.strerror}") from None

    async def _wait_ready(self, state: RunState, timeout_s: float) -> None:
        """Until the gateway says every partition is ready; fail fast when a process exits or fails to load."""
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
            while True:
                for proc in state.processes:
                    code = self._exit_code(proc)
                    if code is not None:
                        raise LocalRuntimeError(f"{proc.role} {proc.id} exited (code {code}) while starting; "
                                                f"the end of {proc.log}:\n{_tail(proc.log)}")
                try:
                    response = await client.get(state.gateway_url + "/v1/status")
                    if response.status_code == 200:
                        body = response.json()
                        if body.get("ready"):
                            return
                        failed = [p for p in body["partitions"] if p.get("state") == "failed"]
                        if failed:
                            proc = state.process(failed[0]["id"])
                            raise LocalRuntimeError(f"partition {proc.id} failed to load: {failed[0]['detail']}; "
                                                    f"the end of {proc.log}:\n{_tail(proc.log)}")
                        last = "; ".join(f"{p['id']}: {p['detail']}" for p in body["partitions"] if not p["ready"])
                except httpx.HTTPError as err:
                    last = f"gateway: {type(err).__name__}"
                if time.monotonic() > deadline:
                    raise LocalRuntimeError(f"deployment {state.name} not ready after {timeout_s:g} s: {last}")
                await asyncio.sleep(0.25)

    # ------------------------------------------------------------ status / down / restart

    async def status(self, name: str | None = None) -> list[RunStatus]:
        result = []
        async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
            for state in self._pick(name):
                alive = {p.id: self.alive(p) for p in state.processes}
                parts: list[dict[str, Any]] = []
                detail = None
                if state.ring:
                    from edgepart.runtime.ring import ring_status

                    parts = await ring_status(self, state, client)
                    result.append(RunStatus(name=state.name, gateway_url=state.gateway_url, emulated=state.emulated,
                                            ready=all(p["ready"] for p in parts) and all(alive.values()),
                                            alive=alive, partitions=parts, calibration=state.calibration))
                    continue
                manager = None
                try:
                    response = await client.get(state.gateway_url + "/v1/status")
                    response.raise_for_status()
                    parts = response.json()["partitions"]
                    manager = response.json().get("manager")
                except httpx.HTTPError as err:
                    detail = f"gateway {state.gateway_url} does not answer: {type(err).__name__}"
                    # what this machine knows without the gateway: which partition processes live
                    parts = [{"id": p.id, "device": p.device, "stage": "?", "ready": False,
                              "detail": "alive; the gateway does not answer" if alive[p.id] else "not running"}
                             for p in state.processes if p.role == "partition"]
                for part in parts:  # the gateway does not tell its clients where partitions are: we know
                    proc = state.process(part["id"])
                    part["pid"], part["url"] = proc.pid, proc.url
                ready = bool(parts) and all(p["ready"] for p in parts) and all(alive.values())
                uncapped = [p.id for p in state.processes if p.cgroup is not None and alive[p.id]
                            and not _in_cgroup(p.pid, p.cgroup)]
                if uncapped and state.status == "ready":
                    detail = "; ".join(filter(None, [detail, f"outside their CPU cgroups: {', '.join(uncapped)}"]))
                if state.status == "starting" and not _supervisor_alive(state.supervisor_pid):
                    detail = "; ".join(filter(None, [detail, "start-up did not finish (`edgepart down` cleans up)"]))
                result.append(RunStatus(name=state.name, gateway_url=state.gateway_url, ready=ready,
                                        emulated=state.emulated and not uncapped, alive=alive, partitions=parts,
                                        detail=detail, predicted_latency_s=state.predicted_latency_s,
                                        restarts={p.id: p.restarts for p in state.processes},
                                        supervised=_supervisor_alive(state.supervisor_pid),
                                        capped=not uncapped, manager=manager, calibration=state.calibration,
                                        generation=state.generation, plan_hash=state.plan_hash,
                                        device_timeout_s=state.device_timeout_s, excluded=state.excluded,
                                        replan=state.replan))
        return result

    def start_supervisor(self, state: RunState) -> int:
        """Start the process that restarts this deployment's processes when they exit (`supervise.py`)."""
        log = Path(state.directory) / "logs" / "supervisor.log"
        with open(log, "ab") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", "edgepart.runtime.supervise", str(self.root), state.name], cwd=state.cwd,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._children[child.pid] = child
        state.supervisor_pid = child.pid
        self._save(state)
        return child.pid

    async def _stop_supervisor(self, state: RunState) -> None:
        pid = state.supervisor_pid
        if pid is None or not _supervisor_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _supervisor_alive(pid) and time.monotonic() < deadline:
            child = self._children.get(pid)
            if child is not None and child.poll() is not None:
                break
            await asyncio.sleep(0.05)
        if _supervisor_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        child = self._children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(child.wait, 10)

    def _reap_exited(self) -> None:
        """Forget the children that exited: processes a re-plan by the supervisor stopped are ours to reap."""
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]

    async def teardown(self, state: RunState) -> list[str]:
        """Stop the supervisor and every process of `state`, remove its emulated devices and its run directory."""
        await self._stop_supervisor(state)
        state = self.load(state.name) or state  # the supervisor may have restarted a process since
        await self._stop_processes(list(state.processes))
        self._reap_exited()
        problems = destroy_testbed(state.testbed) if state.testbed is not None else []
        shutil.rmtree(state.directory, ignore_errors=True)
        return problems

    async def down(self, name: str | None = None) -> list[str]:
        """Stop one deployment (or the only one); the names stopped."""
        states = self._pick(name)
        if name is None and len(states) > 1:
            raise LocalRuntimeError(f"several deployments are up ({', '.join(s.name for s in states)}); "
                                    "name the one to stop")
        for state in states:
            problems = await self.teardown(state)
            for problem in problems:
                self._echo(f"warning: {problem}")
        return [s.name for s in states]

    async def kill(self, name: str, ident: str) -> None:
        """SIGKILL one process of a deployment (failure testing)."""
        state = self._pick(name)[0]
        proc = state.process(ident)
        if self.alive(proc):
            os.kill(proc.pid, signal.SIGKILL)
        while self.alive(proc):
            await asyncio.sleep(0.02)

    async def restart(self, name: str, ident: str, ready_timeout_s: float = 120.0) -> ProcessState:
        """Start one process again (killing it first if it still runs) and wait until the deployment is ready."""
        state = self._pick(name)[0]
        new = await self.respawn(state, ident, cap_later=True)
        await self._wait_ready(state, ready_timeout_s)
        self._apply_caps(state)
        return new

    async def respawn(self, state: RunState, ident: str, *, cap_later: bool = False) -> ProcessState:
        """Start process `ident` of `state` again on its own address (stopping it first), counted as a restart;
        saves the state. Without `cap_later` an emulated partition starts inside its CPU cgroup."""
        old = state.process(ident)
        child = self._children.get(old.pid)
        code = child.poll() if child is not None else None  # known for processes this runtime started
        await self._stop_processes([old])
        sockets: tuple[socket.socket, ...] = ()
        if old.role == "gateway" and not state.emulated:
            config = json.loads(Path(old.config).read_text())
            sockets = (_free_socket("127.0.0.1", state.port),
                       _free_socket(config["internal_host"], int(config["internal_port"])))
        elif old.netns is None:
            sockets = (_free_socket(*_host_port(old.url)),)
        elif old.role == "gateway":
            sockets = (_free_socket("127.0.0.1", state.port),)
        try:
            threads = json.loads(Path(old.config).read_text()).get("threads", 1) if old.role == "partition" else 1
            new = self._spawn(state, old.id, old.role, old.device, old.url, Path(old.config), threads=threads,
                              sockets=sockets, netns=old.netns, cgroup=old.cgroup, cap_later=cap_later)
        finally:
            for sock in sockets:
                sock.close()
        new.restarts, new.last_exit = old.restarts + 1, code
        state.processes = [new if p.id == ident else p for p in state.processes]
        self._save(state)
        return new

    # ------------------------------------------------------------ lost devices: re-plan without them

    def devices_down(self, state: RunState) -> set[str]:
        """Devices with a partition not running, or (emulated) whose network namespace is gone."""
        return {p.device for p in state.processes if p.role == "partition"
                and (not self.alive(p) or (p.netns is not None and not (NETNS_DIR / p.netns).exists()))}

    def can_replan(self, state: RunState) -> bool:
        """A planned deployment started by this version (a re-plan starts from its saved deployment)."""
        return (state.device_timeout_s is not None and not state.ring
                and (Path(state.directory) / DEPLOYMENT_FILE).is_file())

    async def replan(self, state: RunState, lost: dict[str, str], ready_timeout_s: float = 300.0) -> RunState:
        """Plan the deployment again without the `lost` devices (name -> why) and those left out before, with the
        spec and solver it was started with; stop the old processes, start the new plan's and wait until ready.
        Without a feasible plan the old processes keep running and `state.replan` says why; saves the state."""
        from edgepart.plan import save_plan
        from edgepart.planner.device_loss import NoDevicesLeftError, remaining_spec
        from edgepart.runtime.planning import plan_deployment

        now = time.time()
        excluded = [*state.excluded, *(ExcludedDevice(name=name, reason="DeviceUnreachable", message=why, since=now)
                                       for name, why in sorted(lost.items()))]
        state.excluded = excluded
        directory = Path(state.directory)
        deployment = DNNDeployment.model_validate_json((directory / DEPLOYMENT_FILE).read_text())
        try:
            remaining = remaining_spec(deployment.spec, {e.name for e in excluded})
            planned = await asyncio.to_thread(plan_deployment, remaining.spec, base=Path(state.cwd))
        except (NoDevicesLeftError, EdgepartError, ValueError) as err:
            state.replan = Replan(generation=state.generation, at=now, lost=sorted(lost), feasible=False,
                                  reason=f"no feasible plan without {', '.join(e.name for e in excluded)}: {err}")
            self._save(state)
            return state
        await self._stop_processes(list(state.processes))
        if state.testbed is not None:  # emulated: new devices for the remaining ones (the lost one may be gone)
            for problem in await asyncio.to_thread(destroy_testbed, state.testbed):
                self._echo(f"warning: {problem}")
            state.testbed = None
        save_plan(planned.plan, directory / "plan.json")
        moved = f"; the input moved from {remaining.moved_from} to {remaining.master}" if remaining.moved_from else ""
        state.processes, state.status, state.generation = [], "starting", state.generation + 1
        state.plan_hash, state.solver, state.how = plan_hash(planned.plan), planned.plan.solver, planned.how
        predicted = planned.plan.predicted
        state.predicted_latency_s = predicted.latency_s if predicted else None
        state.predicted_throughput_per_s = predicted.throughput_per_s if predicted else None
        state.replan = Replan(generation=state.generation, at=now, lost=sorted(lost), feasible=True,
                              reason="; ".join(lost[n] for n in sorted(lost)) + moved,
                              devices=list(planned.plan.devices), master=remaining.master, plan_hash=state.plan_hash)
        self._save(state)
        reduced = deployment.model_copy(update={"spec": remaining.spec})
        if state.emulated:
            await self._up_emulated(reduced, planned, state)
        else:
            await self._up_local(reduced, planned, state)
        await self._wait_ready(state, ready_timeout_s)
        self._apply_caps(state)
        state.status = "ready"
        self._save(state)
        return state

    def plan_of(self, name: str) -> Plan:
        from edgepart.plan import plan_from_json

        state = self._pick(name)[0]
        return plan_from_json((Path(state.directory) / "plan.json").read_text())

