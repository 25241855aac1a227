"""Real Redis topologies for the tests, started from the same ``redis-server`` binary as the rest
of the suite (:func:`memory_engine.tooling.embedded_redis.find_redis_server`) on free loopback
ports: a Redis Cluster (masters, optional replicas), a Sentinel group (master, replica, three
sentinels), and a TLS server with ACL users (a throwaway CA made with ``cryptography``).

Every wait is on a condition (``CLUSTER INFO``, ``INFO replication``, ``SENTINEL``), with a
deadline; every process is stopped by :meth:`close` (TERM, then KILL).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from memory_engine.tooling.embedded_redis import find_redis_server, free_port

__all__ = [
    "LocalCluster",
    "LocalSentinels",
    "ServerProcess",
    "TlsFiles",
    "TlsServer",
    "make_certificates",
    "wait_until",
]

SLOTS = 16384
START_TIMEOUT_S = 15.0
TOPOLOGY_TIMEOUT_S = 30.0
NODE_TIMEOUT_MS = 1000  # cluster-node-timeout: short, so a failover completes within seconds


def wait_until(
    condition: Callable[[], bool], what: str, timeout_s: float = TOPOLOGY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _info(client: redis.Redis, section: str) -> dict[str, Any]:
    return dict(client.info(section))


class ServerProcess:
    """One redis-server (or sentinel) process in its own directory."""

    def __init__(
        self,
        root: Path,
        name: str,
        args: Sequence[str],
        *,
        port: int | None = None,
        password: str | None = None,
        config: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.args = list(args)
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        head = [find_redis_server()]
        if self.config is not None:
            conf = self.dir / "redis.conf"
            conf.write_text(self.config.format(port=self.port, dir=self.dir))
            head.append(str(conf))
        return [
            *head,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.dir / "redis.log"),
            "--loglevel",
            "warning",
            *self.args,
        ]

    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.dir,
        )
        proc = self.proc

        def answers() -> bool:
            if proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server {self.port} exited: {log}")
            return bool(self.client(timeout_s=0.5).ping())

        wait_until(answers, f"redis-server on port {self.port}", START_TIMEOUT_S)
        return self

    def client(self, timeout_s: float = 5.0, **kwargs: Any) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            **kwargs,
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass


def _base_args() -> list[str]:
    return ["--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"]


# ---- Redis Cluster ------------------------------------------------------------------------------


class LocalCluster:
    """``masters`` masters sharing the 16,384 slots, each with ``replicas`` replicas."""

    def __init__(self, root: Path, *, masters: int = 3, replicas: int = 0) -> None:
        args = [
            *_base_args(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
            # A replica may take over whatever its link's age (the tests' failovers are quick).
            "--cluster-replica-validity-factor",
            "0",
        ]

        self.bus_ports: dict[int, int] = {}

        def node(name: str) -> ServerProcess:
            # The bus port is set: the default (port + 10000) fails for ports above 55535.
            bus = free_port()
            proc = ServerProcess(root, name, [*args, "--cluster-port", str(bus)])
            self.bus_ports[proc.port] = bus
            return proc

        self.masters = [node(f"m{i}") for i in range(masters)]
        self.replicas = [node(f"r{i}-{j}") for i in range(masters) for j in range(replicas)]
        self.replicas_per_master = replicas

    @property
    def nodes(self) -> list[ServerProcess]:
        return self.masters + self.replicas

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.masters[0].port}/0"

    def start(self) -> LocalCluster:
        for node in self.nodes:
            node.start()
        per = SLOTS // len(self.masters)
        for i, m in enumerate(self.masters):
            last = SLOTS - 1 if i == len(self.masters) - 1 else (i + 1) * per - 1
            m.client().execute_command("CLUSTER ADDSLOTSRANGE", i * per, last)
        first = self.masters[0]
        for node in self.nodes[1:]:
            node.client().execute_command(
                "CLUSTER MEET", "127.0.0.1", first.port, self.bus_ports[first.port]
            )
        count = len(self.nodes)
        for node in self.nodes:
            wait_until(lambda n=node: self._known(n) == count, f"node {node.port} to meet all")
        for i, m in enumerate(self.masters):
            master_id = self.node_id(m)
            for replica in self.replicas[
                i * self.replicas_per_master : (i + 1) * self.replicas_per_master
            ]:
                replica.client().execute_command("CLUSTER REPLICATE", master_id)
        self.wait_healthy()
        return self

    def wait_healthy(self) -> None:
        for node in self.nodes:
            wait_until(
                lambda n=node: n.client().execute_command("CLUSTER INFO")["cluster_state"] == "ok",
                f"cluster_state:ok on {node.port}",
            )
        for node in self.nodes:  # after a failover a former master is a replica, and back
            wait_until(
                lambda n=node: (
                    _info(n.client(), "replication").get("role") == "master"
                    or _info(n.client(), "replication").get("master_link_status") == "up"
                ),
                f"replica {node.port} in sync",
            )

    @staticmethod
    def _nodes(node: ServerProcess) -> list[dict[str, Any]]:
        """``CLUSTER NODES`` as redis-py parses it (one dict per node)."""
        return list(node.client().execute_command("CLUSTER NODES").values())

    @classmethod
    def _known(cls, node: ServerProcess) -> int:
        return sum(1 for n in cls._nodes(node) if "handshake" not in n["flags"])

    @staticmethod
    def node_id(node: ServerProcess) -> str:
        raw = node.client().execute_command("CLUSTER MYID")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def keyslot(self, key: str) -> int:
        return int(self.masters[0].client().execute_command("CLUSTER KEYSLOT", key))

    def owner(self, slot: int) -> ServerProcess:
        """The master serving ``slot``, as the nodes see it now."""
        for node in self.nodes:
            try:
                if _info(node.client(timeout_s=1.0), "replication").get("role") != "master":
                    continue
                slots = node.client().execute_command("CLUSTER SLOTS")
            except redis.RedisError:
                continue
            for lo, hi, primary, *_rest in slots:
                if lo <= slot <= hi:
                    port = int(primary[1])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no master serves slot {slot}")

    def replica_of(self, master: ServerProcess) -> ServerProcess:
        master_id = self.node_id(master)
        for replica in self.replicas:
            mine = next(n for n in self._nodes(replica) if "myself" in n["flags"])
            if "slave" in mine["flags"] and mine["master_id"] == master_id:
                return replica
        raise LookupError(f"no replica of {master.port}")

    def failover(self, replica: ServerProcess) -> None:
        """``CLUSTER FAILOVER`` on ``replica`` (coordinated with its master: no write is lost),
        then wait until every node agrees on the new master."""
        replica.client().execute_command("CLUSTER FAILOVER")
        wait_until(
            lambda: _info(replica.client(), "replication").get("role") == "master",
            f"{replica.port} to become master",
        )
        self.wait_healthy()

    def migrate_slot(
        self, slot: int, target: ServerProcess, *, pause: Callable[[], None] = lambda: None
    ) -> int:
        """Move ``slot`` to ``target`` the way ``redis-cli --cluster reshard`` does: IMPORTING on
        the target, MIGRATING on the source, ``MIGRATE`` the keys in batches, then ``SETSLOT
        NODE`` everywhere. ``pause`` runs between the steps (clients keep writing meanwhile).
        Returns the number of keys moved."""
        source = self.owner(slot)
        src, dst = source.client(), target.client()
        source_id, target_id = self.node_id(source), self.node_id(target)
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        pause()
        moved = 0
        while True:
            keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100)
            if not keys:
                break
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            pause()
        for node in [target, source, *(n for n in self.masters if n not in (target, source))]:
            node.client().execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        return moved

    def close(self) -> None:
        for node in self.nodes:
            node.stop()


# ---- Sentinel -----------------------------------------------------------------------------------

SENTINEL_MASTER = "enginemaster"
_SENTINEL_CONF = """port {port}
dir {dir}
sentinel monitor enginemaster 127.0.0.1 MASTER_PORT 2
sentinel down-after-milliseconds enginemaster 1000
sentinel failover-timeout enginemaster 5000
sentinel parallel-syncs enginemaster 1
"""


class LocalSentinels:
    """A master, one replica and three sentinels watching them (quorum 2)."""

    def __init__(self, root: Path) -> None:
        # The master refuses writes once no replica has acknowledged for 1 s: that bounds how
        # long a demoted master that still has clients accepts writes the promoted replica
        # never sees (docs/scaling.md, "Sentinel").
        self.master = ServerProcess(
            root,
            "master",
            [*_base_args(), "--min-replicas-to-write", "1", "--min-replicas-max-lag", "1"],
        )
        self.replica = ServerProcess(root, "replica", _base_args())
        conf = _SENTINEL_CONF.replace("MASTER_PORT", str(self.master.port))
        self.sentinels = [
            ServerProcess(root, f"sentinel{i}", ["--sentinel"], config=conf) for i in range(3)
        ]

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def start(self) -> LocalSentinels:
        self.master.start()
        self.replica.args += ["--replicaof", "127.0.0.1", str(self.master.port)]
        self.replica.start()
        wait_until(
            lambda: _info(self.replica.client(), "replication").get("master_link_status") == "up",
            "replica in sync",
        )
        for s in self.sentinels:
            s.start()
        for s in self.sentinels:
            wait_until(lambda s=s: self._sees_replica(s), f"sentinel {s.port} to see the replica")
        return self

    @staticmethod
    def _sees_replica(sentinel: ServerProcess) -> bool:
        replicas = sentinel.client().execute_command("SENTINEL REPLICAS", SENTINEL_MASTER)
        return bool(replicas)

    def master_port(self) -> int:
        _host, port = (
            self.sentinels[0]
            .client()
            .execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER)
        )
        return int(port)

    def failover(self) -> tuple[ServerProcess, ServerProcess]:
        """``SENTINEL FAILOVER``: promote the replica; returns (old master, new master) once the
        sentinels name the new one and the old one refuses writes (``NOREPLICAS``, from
        ``min-replicas-to-write``, or ``READONLY`` once a sentinel has demoted it): from then on
        nothing written can be lost."""
        old = self.master if self.master_port() == self.master.port else self.replica
        new = self.replica if old is self.master else self.master
        self.sentinels[0].client().execute_command("SENTINEL FAILOVER", SENTINEL_MASTER)
        wait_until(lambda: self.master_port() == new.port, "the sentinels to name the new master")

        def refuses_writes() -> bool:
            try:
                old.client().set("failover-probe", "1")
            except redis.ResponseError as exc:
                return str(exc).startswith(("NOREPLICAS", "READONLY"))
            return False

        wait_until(refuses_writes, "the old master to refuse writes")
        return old, new

    def close(self) -> None:
        for p in [*self.sentinels, self.replica, self.master]:
            p.stop()


# ---- TLS and ACL --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_certificates(root: Path) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 / localhost, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("memory-engine test CA"))
        .issuer_name(name("memory-engine test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    root.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(root / "ca.pem", root / "server.pem", root / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


ADMIN_PASSWORD = "admin-pw"


class TlsServer:
    """redis-server with a TLS port (clients need not present certificates) and a plain port
    for the admin (the default user, with a password) that creates ACL users."""

    def __init__(self, root: Path) -> None:
        self.tls = make_certificates(root / "tls")
        self.tls_port = free_port()
        self.server = ServerProcess(
            root,
            "tls",
            [
                *_base_args(),
                "--requirepass",
                ADMIN_PASSWORD,
                "--tls-port",
                str(self.tls_port),
                "--tls-cert-file",
                str(self.tls.cert),
                "--tls-key-file",
                str(self.tls.key),
                "--tls-ca-cert-file",
                str(self.tls.ca),
                "--tls-auth-clients",
                "no",
            ],
            password=ADMIN_PASSWORD,
        )

    def start(self) -> TlsServer:
        self.server.start()
        return self

    def add_user(self, user: str, password: str, key_prefix: str) -> None:
        """An ACL user confined to ``<key_prefix>:*`` (every key the engine writes under that
        prefix: memories, indexes, breakers, beat), without dangerous commands."""
        self.server.client().execute_command(
            "ACL",
            "SETUSER",
            user,
            "reset",
            "on",
            f">{password}",
            f"~{key_prefix}:*",
            "resetchannels",
            "+@all",
            "-@dangerous",
            "+info",
        )

    def url(self, user: str, password: str) -> str:
        return (
            f"rediss://{user}:{password}@127.0.0.1:{self.tls_port}/0"
            f"?ssl_ca_certs={self.tls.ca}&ssl_cert_reqs=required"
        )

    def close(self) -> None:
        self.server.stop()
