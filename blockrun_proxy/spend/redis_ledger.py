"""The spend ledger in Redis, shared by every replica of a fleet (``--redis-url``).

- ``<prefix>:ledger:calls``: a stream of call records, capped at about ``max_records``
  entries (``XADD MAXLEN ~``: Redis trims whole nodes, so a little more may stay);
- ``<prefix>:ledger:hour:<unix hour>``: one hash per hour, the totals per model
  (``<model>\\t<field>``), expiring ``retention`` seconds after the hour.

A batch of records is one pipelined round trip. Redis errors surface as
``RedisUnavailable``; the recorder keeps the batch and tries again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from blockrun_proxy.redis_link import RedisLink
from blockrun_proxy.spend.ledger import DEFAULT_MAX_RECORDS
from blockrun_proxy.spend.records import FAILED_AFTER_PAYMENT, REFUSED, SpendRecord
from blockrun_proxy.spend.summary import HOUR, HourRow, Totals, hour_of

if TYPE_CHECKING:
    from redis.asyncio import Redis

FIELDS = ("calls", "signed", "settled", "failed_after_payment", "refused")
SEPARATOR = "\t"


class RedisLedger:
    backend = "redis"

    def __init__(
        self,
        link: RedisLink,
        *,
        retention_seconds: float,
        max_records: int = DEFAULT_MAX_RECORDS,
    ) -> None:
        self._link = link
        self._calls = link.key("ledger", "calls")
        self._retention = int(retention_seconds)
        self._max_records = max_records

    def _hour_key(self, hour: int) -> str:
        return self._link.key("ledger", "hour", str(hour))

    async def append(self, records: Sequence[SpendRecord]) -> None:
        async def write(client: Redis) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for record in records:
                    pipe.xadd(
                        self._calls,
                        {"r": orjson.dumps(record.to_dict())},
                        maxlen=self._max_records,
                        approximate=True,
                    )
                    key = self._hour_key(hour_of(record.ts))
                    model = record.model.replace(SEPARATOR, " ")
                    increments = (
                        1,
                        record.signed,
                        record.settled or 0,
                        int(record.outcome == FAILED_AFTER_PAYMENT),
                        int(record.outcome == REFUSED),
                    )
                    for name, value in zip(FIELDS, increments, strict=True):
                        if value:
                            pipe.hincrby(key, f"{model}{SEPARATOR}{name}", value)
                    pipe.expireat(key, hour_of(record.ts) + HOUR + self._retention)
                await pipe.execute()

        await self._link.call(write)

    async def hour_rows(self, since: int, until: int) -> list[HourRow]:
        hours = list(range(since, until + 1, HOUR))

        async def read(client: Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for hour in hours:
                    pipe.hgetall(self._hour_key(hour))
                return list(await pipe.execute())

        rows: list[HourRow] = []
        for hour, fields in zip(hours, await self._link.call(read), strict=True):
            per_model: dict[str, Totals] = {}
            for raw_field, raw_value in fields.items():
                model, _, name = raw_field.decode("utf-8", "replace").rpartition(SEPARATOR)
                if name not in FIELDS:
                    continue
                totals = per_model.setdefault(model, Totals())
                setattr(totals, name, getattr(totals, name) + int(raw_value))
            rows += [(hour, model, totals) for model, totals in per_model.items()]
        return rows

    async def last(self, count: int) -> list[SpendRecord]:
        entries: Any = await self._link.call(
            lambda client: client.xrevrange(self._calls, "+", "-", count=count)
        )
        records = []
        for _, fields in entries or ():
            record = _record(fields.get(b"r") if isinstance(fields, dict) else None)
            if record is not None:
                records.append(record)
        return records

    async def aclose(self) -> None:
        """The link is closed by whoever opened it (it is shared with the budget)."""


def _record(raw: object) -> SpendRecord | None:
    """A stored record, or None for anything else (another writer's junk is skipped)."""
    if not isinstance(raw, bytes):
        return None
    try:
        return SpendRecord.from_dict(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None
