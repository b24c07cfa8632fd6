"""Services the tests start for real: a throwaway PostgreSQL cluster and an MLflow tracking server
on it (PostgreSQL backend store, proxied artifacts)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers import VENV_BIN, free_port, process, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PSYCOPG = "postgresql+psycopg"  # SQLAlchemy's name for psycopg 3, the driver installed here


def _as_postgres(args: Sequence[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)


def _pg(tool: str) -> str:
    found = PG_BIN / tool
    return str(found) if found.exists() else (shutil.which(tool) or tool)


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    data: Path
    options: str

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://postgres@{self.host}:{self.port}/{database}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database (empty, or a copy of ``template``); its ``postgresql://`` URL."""
        import psycopg

        copy = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{copy}')
        return self.url(name)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: connections break at once, as in an outage (``fast`` keeps what was
        committed; ``immediate`` is a crash, which this cluster's settings make lossy)."""
        self._ctl("-m", mode, "stop")

    def start(self) -> None:
        self._ctl("-o", self.options, "-l", str(self.data.parent / "log"), "-w", "start")

    def _ctl(self, *args: str) -> None:
        command = _as_postgres([_pg("pg_ctl"), "-D", str(self.data), *args])
        subprocess.run(command, check=True, capture_output=True)


@contextlib.contextmanager
def postgres(listen: Sequence[str] = ("127.0.0.1",)) -> Iterator[Postgres]:
    """A PostgreSQL cluster in a temporary directory on a free port, trusting every local
    connection (a test cluster), listening on ``listen``; removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    data, port = directory / "data", free_port()
    subprocess.run(
        _as_postgres(
            [_pg("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
    )
    options = (
        f"-p {port} -k {directory} -c listen_addresses='{','.join(listen)}' "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    with (data / "pg_hba.conf").open("a") as hba:
        hba.write("host all all 0.0.0.0/0 trust\n")
    cluster = Postgres(listen[0], port, data, options)
    cluster.start()
    try:
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(
    backend: str, artifacts: Path, logs: Path, host: str = "127.0.0.1"
) -> Iterator[str]:
    """``mlflow server`` on ``backend`` with proxied artifacts under ``artifacts``; its URL."""
    port = free_port()
    args = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--allowed-hosts",
        "*",
    ]
    url = f"http://{host}:{port}"
    with process(args, cwd=logs, env={}, log=logs / f"mlflow-server-{port}.log") as proc:
        wait_until(
            lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200,
            120,
            "mlflow server",
            proc,
        )
        yield url


@dataclass(frozen=True)
class NetHost:
    """A host of the test's own: a network namespace joined to this one by a veth pair."""

    namespace: str
    address: str  # the host's address
    gateway: str  # this machine's address on the host's link

    @property
    def prefix(self) -> list[str]:
        """What runs a command on the host."""
        return ["ip", "netns", "exec", self.namespace]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def network_hosts(count: int) -> Iterator[list[NetHost]]:
    """``count`` hosts, each in a network namespace with a /30 link to this machine (10.213.N.0;
    traffic stays on those links); removed afterwards."""
    tag = f"{os.getpid() % 10000:04d}"
    hosts: list[NetHost] = []
    try:
        for n in range(1, count + 1):
            ns, outside, inside = f"lg{tag}h{n}", f"lg{tag}o{n}", f"lg{tag}i{n}"
            host = NetHost(ns, f"10.213.{n}.2", f"10.213.{n}.1")
            _ip("netns", "add", ns)
            hosts.append(host)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", ns)
            _ip("addr", "add", f"{host.gateway}/30", "dev", outside)
            _ip("link", "set", outside, "up")
            _ip("netns", "exec", ns, "ip", "addr", "add", f"{host.address}/30", "dev", inside)
            _ip("netns", "exec", ns, "ip", "link", "set", inside, "up")
            _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield hosts
    finally:
        for host in hosts:  # deleting a namespace deletes its end of the pair, and so the pair
            subprocess.run(["ip", "netns", "del", host.namespace], check=False, capture_output=True)
