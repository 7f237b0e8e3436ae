"""Redis topologies for the tests, from Debian's binaries on free loopback ports: a Redis Cluster
(``redis-server --cluster-enabled yes`` nodes joined by ``redis-cli --cluster create``) and a
primary with a replica watched by three ``redis-sentinel`` processes. Each is a context manager
that stops every process it started."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final, TypeVar

from tests.redis_server import HOST, RedisServer, _stop, free_port

__all__ = ["RedisClusterServers", "RedisSentinels"]


_S = TypeVar("_S", bound="_Started")


class _Started:
    """``with``: ``start()`` on entry (``close()`` if it fails), ``close()`` on exit."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisClusterServers(_Started):
    """A Redis Cluster of ``primaries`` primaries (and ``replicas`` replicas each) from the
    ``redis-server`` binary on free loopback ports, created with ``redis-cli --cluster create``;
    a context manager that stops every node."""

    def __init__(self, *, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 1000):
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH (Debian: apt-get install redis-tools)")
        self._cli = cli
        self.replicas = replicas
        args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms))  # fmt: skip
        self.nodes = [RedisServer(extra_args=args) for _ in range(primaries * (1 + replicas))]

    @property
    def url(self) -> str:
        """The URL of the first node (any node will do for a cluster client)."""
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"{HOST}:{node.port}" for node in self.nodes]
        subprocess.run(
            [self._cli, "--cluster", "create", *addresses, "--cluster-replicas",
             str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_ok()
        if self.replicas:  # a replica that has not synced yet is never promoted
            deadline = time.monotonic() + 30
            for node in self.nodes:
                while "role:slave" in (info := self.info(node, "INFO replication")):
                    if "master_link_status:up" in info:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError("a cluster replica never synced")
                    time.sleep(0.05)

    def info(self, node: RedisServer, command: str) -> str:
        return subprocess.run(
            [self._cli, "-h", HOST, "-p", str(node.port), *command.split()],
            check=True, capture_output=True, timeout=10, text=True,
        ).stdout  # fmt: skip

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says the cluster is ok and knows every slot's owner."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [n for n in self.nodes if n.running]
            if all("cluster_state:ok" in self.info(n, "CLUSTER INFO") for n in running):
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not become ok")

    def owner(self, key: str) -> RedisServer:
        """The primary serving ``key``'s slot now."""
        alive = next(node for node in self.nodes if node.running)
        slot = self.info(alive, f"CLUSTER KEYSLOT {key}").strip()
        for node in self.nodes:
            if not node.running:
                continue
            for line in self.info(node, "CLUSTER NODES").splitlines():
                fields = line.split()
                if "myself" in fields[2] and "master" in fields[2]:
                    for span in fields[8:]:
                        low, _, high = span.partition("-")
                        if low.isdigit() and int(low) <= int(slot) <= int(high or low):
                            return node
        raise LookupError(f"no primary serves slot {slot}")

    def close(self) -> None:
        for node in self.nodes:
            node.close()


class RedisSentinels(_Started):
    """A primary, one replica and three ``redis-sentinel`` processes watching them (Debian's
    binaries, free loopback ports, ``down-after-milliseconds`` short); a context manager."""

    SERVICE: Final = "resilience-test"

    def __init__(self, *, down_after_ms: int = 300, failover_timeout_ms: int = 2000) -> None:
        binary = shutil.which("redis-sentinel")
        if binary is None:
            raise RuntimeError("redis-sentinel is not on PATH (apt-get install redis-sentinel)")
        self._binary = binary
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms
        self.primary = RedisServer()
        self.replica = RedisServer()
        self._dir = tempfile.TemporaryDirectory(prefix="resilience-sentinel-")
        self.sentinel_ports: list[int] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [(HOST, port) for port in self.sentinel_ports]

    def start(self) -> None:
        self.primary.start()
        self.replica.extra_args = ("--replicaof", HOST, str(self.primary.port))
        self.replica.start()
        for n in range(3):
            port = free_port()
            conf = Path(self._dir.name) / f"sentinel-{n}.conf"
            conf.write_text(
                f"port {port}\nbind {HOST}\ndir {self._dir.name}\n"
                f"sentinel monitor {self.SERVICE} {HOST} {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {self._down_after_ms}\n"
                f"sentinel failover-timeout {self.SERVICE} {self._failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
            )
            self._procs.append(
                subprocess.Popen(
                    [self._binary, str(conf), "--loglevel", "warning"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            self.sentinel_ports.append(port)
        self.wait_for(lambda addr: addr == (HOST, self.primary.port), "the primary")
        self._wait_replica_in_sync()

    def _ask(self, port: int, *command: str) -> str:
        cli = shutil.which("redis-cli") or "redis-cli"
        return subprocess.run(
            [cli, "-h", HOST, "-p", str(port), *command],
            capture_output=True, timeout=5, text=True, check=False,
        ).stdout  # fmt: skip

    def master_address(self, port: int) -> tuple[str, int] | None:
        out = self._ask(port, "SENTINEL", "get-master-addr-by-name", self.SERVICE).split()
        return (out[0], int(out[1])) if len(out) == 2 and out[1].isdigit() else None

    def wait_for(
        self, check: Callable[[tuple[str, int]], bool], what: str, timeout: float = 30
    ) -> None:
        """Until every sentinel names a primary that passes ``check`` (and knows the others)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            addresses = [self.master_address(port) for port in self.sentinel_ports]
            if all(a is not None and check(a) for a in addresses):
                known = self._ask(self.sentinel_ports[0], "SENTINEL", "sentinels", self.SERVICE)
                if known.count("name") >= 2 or what != "the primary":
                    return
            time.sleep(0.05)
        raise RuntimeError(f"the sentinels never agreed on {what}")

    def _wait_replica_in_sync(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "master_link_status:up" in self._ask(self.replica.port, "INFO", "replication"):
                return
            time.sleep(0.05)
        raise RuntimeError("the replica never synced")

    def close(self) -> None:
        for proc in self._procs:
            _stop(proc)
        self._procs.clear()
        self.primary.close()
        self.replica.close()
        self._dir.cleanup()
