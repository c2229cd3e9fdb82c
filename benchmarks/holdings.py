"""What keeping holdings in Redis costs a scheduler, in process against a local redis-server,
and what the alternative (peers registering again every blob they hold with a restarted
scheduler) would cost.

- the first register of a task a scheduler does not hold, restored from Redis, against a
  register of a task it holds (N holders, P pieces);
- a seed's piece report that brings digests, answered once they are in Redis, against the
  same report without Redis;
- Redis commands, bytes sent and memory per completed task (a seed and six peers);
- a register of a done peer, the unit of the alternative: a restarted scheduler would take
  one per peer and blob held.

``python -m benchmarks.holdings`` writes benchmarks/results/holdings.{json,md}.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import click
import redis
from aiohttp.test_utils import TestClient, TestServer

from damselfly.core.pieces import piece_length_for
from damselfly.lib.kv import connect
from damselfly.scheduler.app import Scheduler
from damselfly.settings import SchedulerSettings
from testkit.redis import RedisServer

RESULTS = Path(__file__).parent / "results"
PEERS = 6


def task_id(n: int) -> str:
    return f"sha256:{n:064x}"


def length_of(pieces: int) -> int:
    """A task length of exactly ``pieces`` pieces of the length every node uses for it."""
    piece = 256 * 1024
    while piece_length_for(pieces * piece) != piece:
        piece *= 2
    return pieces * piece


def piece_digest(n: int, index: int) -> str:
    return f"blake3:{n:032x}{index + 1:032x}"


class Api:
    def __init__(self, client: TestClient) -> None:
        self.client = client

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await self.client.post(f"/api/v1/{path}", json=body)
        assert answer.status == 200, await answer.text()
        return dict(await answer.json())

    async def announce(self, host_id: str, seed: bool = False) -> None:
        await self.post("hosts", {"id": host_id, "upload_url": f"http://{host_id}.test:65002", "seed": seed})

    async def register(self, n: int, pieces: int, host_id: str, held: bool = False,
                       seeding: bool = False) -> dict[str, Any]:
        length = length_of(pieces)
        return await self.post(f"tasks/{task_id(n)}/register", {
            "host_id": host_id, "length": length, "piece_length": piece_length_for(length),
            "pieces": list(range(pieces)) if held else [], "seeding": seeding})

    async def report(self, n: int, host_id: str, indexes: range, digests: bool) -> None:
        await self.post(f"tasks/{task_id(n)}/pieces", {
            "host_id": host_id, "from_origin": digests,
            "pieces": [[i, piece_digest(n, i) if digests else None] for i in indexes]})

    async def done(self, n: int, host_id: str) -> None:
        await self.post(f"tasks/{task_id(n)}/done", {"host_id": host_id, "success": True})

    async def completed(self, n: int, pieces: int, peers: int, batch: int = 8) -> None:
        """A seed reads task ``n`` from the origin, reporting digests in batches; ``peers`` hold it."""
        await self.register(n, pieces, "seed", seeding=True)
        for start in range(0, pieces, batch):
            await self.report(n, "seed", range(start, min(pieces, start + batch)), digests=True)
        await self.done(n, "seed")
        for p in range(peers):
            await self.register(n, pieces, f"peer-{p}", held=True)
            await self.done(n, f"peer-{p}")


async def started(kv_url: str | None, hosts: int) -> tuple[Scheduler, TestClient, Api]:
    scheduler = Scheduler(SchedulerSettings(), kv=connect(kv_url) if kv_url else None)
    client = TestClient(TestServer(scheduler.application()))
    await client.start_server()
    api = Api(client)
    await api.announce("seed", seed=True)
    for p in range(hosts):
        await api.announce(f"peer-{p}")
    return scheduler, client, api


async def settled(scheduler: Scheduler) -> None:
    """Until everything the scheduler holds is in Redis."""
    holdings = scheduler.holdings
    assert holdings is not None
    while holdings.behind or holdings.pending:
        await holdings.flush()


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    begun = time.perf_counter()
    await call()
    return time.perf_counter() - begun


def ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


async def restore_cost(url: str, holders: int, pieces: int, rounds: int) -> dict[str, Any]:
    """A scheduler learns ``rounds`` tasks; a new one takes the first register of each (a restore),
    and a second register (in memory) for comparison."""
    old, old_client, api = await started(url, holders)
    for n in range(rounds):
        await api.completed(n, pieces, holders)
    await api.announce("seed", seed=True)  # live hosts keep announcing: their records are fresh
    for p in range(holders):
        await api.announce(f"peer-{p}")
    assert old.holdings is not None
    old.holdings.behind = True  # every record written anew, as after an outage: none near its expiry
    await settled(old)
    await old_client.close()
    new, new_client, api = await started(url, 0)  # nobody announced yet: hosts come from their records
    await settled(new)
    first, second = [], []
    for n in range(rounds):
        first.append(await timed(lambda n=n: api.register(n, pieces, "child")))
        second.append(await timed(lambda n=n: api.register(n, pieces, "child2")))
    answer = await api.register(rounds - 1, pieces, "child3")  # hosts that never announce here expire
    assert answer["action"] == "download" and len(answer["digests"]) == pieces, answer["action"]
    await new_client.close()
    return {"holders": holders, "pieces": pieces, "restore_ms": ms(first), "in_memory_ms": ms(second)}


async def report_cost(url: str | None, rounds: int) -> float:
    """A seed's report of 8 new digests, answered (with Redis: once they are written)."""
    scheduler, client, api = await started(url, 0)
    if scheduler.holdings is not None:
        await settled(scheduler)
    pieces = 8 * rounds
    await api.register(0, pieces, "seed", seeding=True)
    samples = [await timed(lambda r=r: api.report(0, "seed", range(8 * r, 8 * r + 8), digests=True))
               for r in range(rounds)]
    await client.close()
    return ms(samples)


def commandstats(client: redis.Redis) -> int:
    return sum(int(v["calls"]) for k, v in client.info("commandstats").items() if k != "cmdstat_info")


async def write_cost(server: RedisServer, pieces: int, tasks: int) -> dict[str, Any]:
    """Commands, bytes in and memory per completed task (a seed and six peers)."""
    direct = server.client()
    scheduler, client, api = await started(server.url, PEERS)
    await settled(scheduler)
    direct.config_resetstat()
    memory = int(direct.info("memory")["used_memory"])
    bytes_in = int(direct.info("stats")["total_net_input_bytes"])
    for n in range(tasks):
        await api.completed(n, pieces, PEERS)
    await settled(scheduler)
    calls = commandstats(direct)
    sent = int(direct.info("stats")["total_net_input_bytes"]) - bytes_in
    grown = int(direct.info("memory")["used_memory"]) - memory
    await client.close()
    direct.flushall()
    return {"pieces": pieces, "commands_per_task": round(calls / tasks, 1), "bytes_per_task": sent // tasks,
            "memory_per_task": grown // tasks}


async def reannounce_unit(rounds: int) -> float:
    """One register of a peer that holds the blob whole, to a scheduler without Redis."""
    _, client, api = await started(None, 1)
    samples = [await timed(lambda n=n: api.register(n, 64, "peer-0", held=True)) for n in range(rounds)]
    await client.close()
    return ms(samples)


async def measure(rounds: int) -> dict[str, Any]:
    server = RedisServer().start()
    try:
        restores = [await restore_cost(server.url, holders, pieces, rounds if holders < 100 else max(3, rounds // 10))
                    for holders, pieces in ((6, 64), (100, 64), (6, 1024), (1000, 1024))]
        server.client().flushall()
        return {
            "restores": restores,
            "report_ms": {"without_redis": await report_cost(None, rounds),
                          "with_redis": await report_cost(server.url, rounds)},
            "writes": [await write_cost(server, pieces, rounds) for pieces in (64, 1024)],
            "reannounce_register_ms": await reannounce_unit(rounds),
        }
    finally:
        server.close()


def markdown(result: dict[str, Any]) -> str:
    lines = ["Holdings in Redis: in process, against a local redis-server (median of each).", "",
             "| holders | pieces | first register at a new scheduler (restored) | a register in memory |",
             "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['holders']} | {r['pieces']} | {r['restore_ms']:.2f} ms | {r['in_memory_ms']:.2f} ms |"
              for r in result["restores"]]
    report = result["report_ms"]
    lines += ["", f"A seed's report of 8 new digests: {report['without_redis']:.2f} ms without Redis, "
                  f"{report['with_redis']:.2f} ms answered once they are in Redis.", "",
              "| pieces | Redis commands per completed task | bytes sent | Redis memory |",
              "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {w['pieces']} | {w['commands_per_task']} | {w['bytes_per_task']} | {w['memory_per_task']} |"
              for w in result["writes"]]
    unit = result["reannounce_register_ms"]
    lines += ["", f"The alternative, peers registering again what they hold with a restarted scheduler: "
                  f"{unit:.2f} ms per register of a done peer here, so 1000 peers holding 100 blobs each cost "
                  f"{unit * 100_000 / 1000:.0f} s of one scheduler per restart, after each peer's next announce "
                  f"(every 2 s); and no peer can give the seeds' digests."]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--rounds", default=50, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=RESULTS, show_default=True)
def holdings(rounds: int, out: Path) -> None:
    """Restore latency, write cost per task, and the cost of re-registering instead."""
    result = asyncio.run(measure(rounds))
    out.mkdir(parents=True, exist_ok=True)
    (out / "holdings.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (out / "holdings.md").write_text(table)
    click.echo(table)


if __name__ == "__main__":
    holdings()
