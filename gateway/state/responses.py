"""Stored Responses (``POST /v1/responses`` with ``store: true``) in the state store: each kept with
a time to live, and all of them bounded in number and in bytes, oldest evicted first.

A record is one value (``{"response": ..., "messages": ...}``: the response object ``GET`` returns,
and the conversation as chat messages, which ``previous_response_id`` continues), keyed by the
caller (a hash of its API key's name, or of the key itself) and the response id, so one tenant can
never read another's. One script per operation, one round trip: ``PUT`` adds the record to an index
(a sorted set by expiry), drops what expired, and evicts the oldest until ``max_stored`` and
``max_bytes`` hold; every key under one hash tag (``{resp.v1}``: one Cluster slot). The memory
store runs the scripts' Python twins.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.state import Script, Store

TAG = "{resp.v1}"
INDEX, SIZES = f"{TAG}:index", f"{TAG}:sizes"  # member -> expiry (ms); member -> bytes, and "#total": their sum


class ResponsesConfig(BaseModel):
    """The top-level ``responses:`` section: how stored responses are kept."""

    model_config = ConfigDict(extra="forbid")

    ttl_s: float = Field(30 * 86400, gt=0, description="seconds a stored response is kept (OpenAI: 30 days)")
    max_stored: int = Field(10_000, ge=1, description="stored responses kept at most (oldest evicted first)")
    max_bytes: int = Field(256 * 2**20, ge=1, description="bytes all stored responses take at most")
    max_response_bytes: int = Field(
        4 * 2**20, ge=1, description="a larger response (with its conversation) is answered but not stored"
    )

    @model_validator(mode="after")
    def _fits(self) -> ResponsesConfig:
        if self.max_response_bytes > self.max_bytes:
            raise ValueError("max_response_bytes must not be larger than max_bytes")
        return self


_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

_PUT = (
    _NOW
    + """
local function drop(member)
  local size = tonumber(redis.call('HGET', KEYS[2], member) or 0)
  redis.call('HDEL', KEYS[2], member)
  redis.call('HINCRBY', KEYS[2], '#total', -size)
  redis.call('ZREM', KEYS[1], member)
  redis.call('DEL', member)
end
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do drop(member) end
local ttl, size = tonumber(ARGV[1]), tonumber(ARGV[4])
redis.call('SET', KEYS[3], ARGV[5], 'PX', ttl)
redis.call('ZADD', KEYS[1], now + ttl, KEYS[3])
redis.call('HSET', KEYS[2], KEYS[3], size)
local total = redis.call('HINCRBY', KEYS[2], '#total', size)
local evicted = 0
while redis.call('ZCARD', KEYS[1]) > tonumber(ARGV[2]) or total > tonumber(ARGV[3]) do
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if oldest == nil then break end
  drop(oldest)
  evicted = evicted + 1
  total = tonumber(redis.call('HGET', KEYS[2], '#total') or 0)
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return evicted
"""
)
_GET = "return redis.call('GET', KEYS[3])"
_DELETE = """
local size = redis.call('HGET', KEYS[2], KEYS[3])
if not size then return redis.call('DEL', KEYS[3]) end
redis.call('HDEL', KEYS[2], KEYS[3])
redis.call('HINCRBY', KEYS[2], '#total', -tonumber(size))
redis.call('ZREM', KEYS[1], KEYS[3])
return redis.call('DEL', KEYS[3])
"""


def _put(data: dict[str, Any], keys: list[str], args: list[Any], now: float) -> int:
    """The memory twin of ``_PUT``: the index is a dict in insertion (= expiry) order."""
    index_key, sizes_key, member = keys
    index: dict[str, Any] = data.setdefault(index_key, {})
    ttl, most, most_bytes, size, value = args
    for old, (expires, _) in list(index.items()):
        if expires > now:
            break
        _drop_twin(data, index_key, sizes_key, old)
    data[member] = (value, now + ttl / 1000)
    index[member] = (now + ttl / 1000, size)
    data[sizes_key] = data.get(sizes_key, 0) + size
    evicted = 0
    while index and (len(index) > most or data[sizes_key] > most_bytes):
        _drop_twin(data, index_key, sizes_key, next(iter(index)))
        evicted += 1
    return evicted


def _drop_twin(data: dict[str, Any], index_key: str, sizes_key: str, member: str) -> None:
    _, size = data[index_key].pop(member)
    data.pop(member, None)
    data[sizes_key] -= size


def _get(data: dict[str, Any], keys: list[str], args: list[Any], now: float) -> bytes | None:
    entry = data.get(keys[2])
    if entry is None or entry[1] <= now:
        return None
    return entry[0]


def _delete(data: dict[str, Any], keys: list[str], args: list[Any], now: float) -> int:
    index_key, sizes_key, member = keys
    found = _get(data, keys, args, now) is not None
    if member in data.get(index_key, {}):
        _drop_twin(data, index_key, sizes_key, member)
    data.pop(member, None)
    return int(found)


PUT = Script("responses.put.v1", _PUT, _put)
GET = Script("responses.get.v1", _GET, _get)
DELETE = Script("responses.delete.v1", _DELETE, _delete)


def scope(caller: str) -> str:
    """The part of a record's key that names its owner: a hash, so no key or name sits in Redis."""
    return hashlib.sha256(caller.encode()).hexdigest()[:24]


class StoredResponses:
    """Put, get and delete stored responses of one caller (``scope``) in ``store``."""

    def __init__(self, store: Store, config: ResponsesConfig, caller: str) -> None:
        self.store, self.config, self.scope = store, config, scope(caller)

    def _keys(self, response_id: str) -> list[str]:
        return [INDEX, SIZES, f"{TAG}:{self.scope}:{response_id}"]

    async def put(self, response_id: str, record: dict[str, Any]) -> bool:
        """Keep ``record``; False when it is larger than ``max_response_bytes`` (not kept)."""
        value = orjson.dumps(record)
        if len(value) > self.config.max_response_bytes:
            return False
        config = self.config
        args = [max(1, int(config.ttl_s * 1000)), config.max_stored, config.max_bytes, len(value), value]
        await self.store.run(PUT, self._keys(response_id), args)
        return True

    async def get(self, response_id: str) -> dict[str, Any] | None:
        value = await self.store.run(GET, self._keys(response_id), [])
        return None if value is None else orjson.loads(value)

    async def delete(self, response_id: str) -> bool:
        return bool(await self.store.run(DELETE, self._keys(response_id), []))
