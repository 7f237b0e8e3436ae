"""The Lua scripts behind ``resilience.redis.RedisStore``.

Every script reads the time from Redis (``TIME``), never from a client, and touches only the
keys it is given, all under one hash tag, so it runs unchanged on Redis Cluster. Keys of one
namespace ``NS`` (prefix ``resilience:{NS}:``):

``ctl``      HASH  limit, epoch (cuts so far), slow (1 = slow start), growth, seq (sends so far)
``permits``  ZSET  lease id -> lease deadline (ms); a permit is a lease
``order``    ZSET  lease id -> send sequence number (to count older requests in flight)
``wake``     LIST  one token per freed permit, capped at the limit; waiters BLPOP it
``workers``  ZSET  worker id -> liveness deadline (ms)
``budget``   HASH  the retry budget's per-second deposit and withdrawal slots
``rate:O``   HASH  the rate gate and pacer of origin ``O``

The rules are those of ``AdaptiveLimiter``, ``RatePacer`` and ``RetryBudget`` in ``_limits.py``.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ACQUIRE", "BUDGET", "RELEASE", "RENEW", "REPORT"]

_PRELUDE: Final = r"""
if redis.replicate_commands then redis.replicate_commands() end

-- the pacer's bucket holds 100 ms of sends: a reopened gate lets out a trickle, not a burst
local BURST = 0.1

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

-- one wake-up token per freed permit, capped so stale tokens cost at most `cap` retries
local function wake_push(wake, n, cap, ttl)
  if n <= 0 then return end
  for _ = 1, math.min(n, cap) do redis.call('LPUSH', wake, '1') end
  redis.call('LTRIM', wake, 0, cap - 1)
  redis.call('PEXPIRE', wake, ttl)
end

-- drop expired leases (their holder died or stalled) and wake as many waiters
local function purge(permits, order, wake, now, cap, ttl)
  local expired = redis.call('ZRANGEBYSCORE', permits, '-inf', now, 'LIMIT', 0, 500)
  local n = #expired
  if n > 0 then
    redis.call('ZREM', permits, unpack(expired))
    redis.call('ZREM', order, unpack(expired))
    wake_push(wake, n, cap, ttl)
  end
  return n
end

local function load_limit(ctl, initial, ceiling)
  local v = redis.call('HMGET', ctl, 'limit', 'epoch', 'slow', 'growth')
  local st = {limit = tonumber(v[1]), epoch = tonumber(v[2]) or 0,
              slow = tonumber(v[3]) or 1, growth = tonumber(v[4]) or 0, dirty = false}
  if st.limit == nil then st.limit = initial; st.dirty = true end
  if ceiling > 0 and st.limit > ceiling then st.limit = ceiling; st.dirty = true end
  if st.limit < 1 then st.limit = 1; st.dirty = true end
  return st
end

local function save_limit(ctl, st, ttl)
  redis.call('HSET', ctl, 'limit', st.limit, 'epoch', st.epoch, 'slow', st.slow,
             'growth', st.growth)
  redis.call('PEXPIRE', ctl, ttl)
end

-- the Finagle retry budget, one slot per second over `ttl` seconds
local function budget(key, now, deposits, withdraw, ratio, min_per_second, ttl, state_ttl)
  local slots = math.max(1, math.ceil(ttl))
  local sec = math.floor(now / 1000)
  local names = {'sec'}
  for i = 0, slots - 1 do names[#names + 1] = 'd' .. i; names[#names + 1] = 'w' .. i end
  local v = redis.call('HMGET', key, unpack(names))
  local last = tonumber(v[1])
  local d, w = {}, {}
  for i = 0, slots - 1 do
    d[i] = tonumber(v[2 + 2 * i]) or 0
    w[i] = tonumber(v[3 + 2 * i]) or 0
  end
  if last == nil or sec - last >= slots then
    for i = 0, slots - 1 do d[i] = 0; w[i] = 0 end
  elseif sec > last then
    for s = last + 1, sec do d[s % slots] = 0; w[s % slots] = 0 end
  end
  if last == nil or sec > last then last = sec end
  local idx = last % slots
  d[idx] = d[idx] + deposits
  local ok = 1
  if withdraw then
    local sd, sw = 0, 0
    for i = 0, slots - 1 do sd = sd + d[i]; sw = sw + w[i] end
    if min_per_second * ttl + ratio * sd - sw >= 1 then w[idx] = w[idx] + 1 else ok = 0 end
  end
  local out = {'sec', last}
  for i = 0, slots - 1 do
    out[#out + 1] = 'd' .. i; out[#out + 1] = d[i]
    out[#out + 1] = 'w' .. i; out[#out + 1] = w[i]
  end
  redis.call('HSET', key, unpack(out))
  redis.call('PEXPIRE', key, state_ttl)
  return ok
end

-- one response into the origin's gate and CUBIC pacer (RatePacer.on_response, simplified:
-- the rate a cut starts from is what the server let through over the last second, counted
-- in a sliding window of two 1 s buckets, instead of RateClocker's smoothed response rate)
local function rate_response(key, now, limited, retry_after, epoch_sent, beta, recovery,
                             min_rate, state_ttl)
  local v = redis.call('HMGET', key, 'blocked', 'epoch', 'rate', 'tokens', 'tlast', 'wmax',
                       'lastfail', 'wcur', 'wprev', 'wstart', 'started')
  local blocked = tonumber(v[1]) or 0
  local epoch = tonumber(v[2]) or 0
  local rate = tonumber(v[3])
  local tokens = tonumber(v[4]) or 0
  local tlast = tonumber(v[5]) or now
  local wmax = tonumber(v[6]) or 0
  local lastfail = tonumber(v[7]) or now
  local cur = tonumber(v[8]) or 0
  local prev = tonumber(v[9]) or 0
  local wstart = tonumber(v[10]) or now
  local started = tonumber(v[11]) or now
  if now - wstart >= 2000 then
    prev, cur, wstart = 0, 0, now
  elseif now - wstart >= 1000 then
    prev, cur, wstart = cur, 0, wstart + 1000
  end
  if not limited then cur = cur + 1 end
  local through
  if now - started < 1000 then
    through = (prev + cur) / math.max((now - started) / 1000, 0.1)
  else
    through = prev * (1 - (now - wstart) / 1000) + cur
  end
  local closed = 0
  local new_rate = nil
  if limited then
    if retry_after >= 0 and now + retry_after > blocked then
      if blocked <= now then closed = 1 end
      blocked = now + retry_after
    end
    if epoch_sent == epoch then
      -- a cut, at most once per round trip: only sends paced since the last cut may cut
      epoch = epoch + 1
      wmax = math.max(through, min_rate)
      lastfail = now
      new_rate = wmax * beta
    end
  elseif rate then
    -- CUBIC: back at the rate that was cut `recovery` seconds after the cut, then probing
    local scale = math.max(wmax * (1 - beta) / (recovery ^ 3), 1e-9)
    local dt = (now - lastfail) / 1000 - recovery
    new_rate = math.min(scale * dt ^ 3 + wmax, 2 * math.max(through, min_rate))
  end
  if new_rate then
    if rate == nil then
      tokens = 0
      tlast = now
    elseif now > tlast then
      tokens = math.min(math.max(rate * BURST, 1), tokens + (now - tlast) * rate / 1000)
      tlast = now
    end
    rate = math.max(new_rate, min_rate)
    tokens = math.min(tokens, math.max(rate * BURST, 1))
    redis.call('HSET', key, 'rate', rate, 'tokens', tokens, 'tlast', tlast, 'wmax', wmax,
               'lastfail', lastfail)
  end
  redis.call('HSET', key, 'blocked', blocked, 'epoch', epoch, 'wcur', cur, 'wprev', prev,
             'wstart', wstart, 'started', started)
  redis.call('PEXPIRE', key, state_ttl)
  local milli = -1
  if rate then milli = math.floor(rate * 1000) end
  return closed, milli
end
"""

ACQUIRE: Final = (
    _PRELUDE
    + r"""
-- KEYS: ctl permits order wake workers budget rate
-- ARGV: lease worker lease_ttl_ms initial ceiling slot_epoch deposits ratio min_per_second
--       budget_ttl state_ttl_ms worker_ttl_ms
-- slot_epoch: -1, or the pacing epoch of the sending slot reserved by an earlier call (a send
-- keeps the epoch of its slot, so sends scheduled before a cut do not cut again)
-- -> {0, seq, epoch, limit, send_epoch, workers, ahead}   granted, with `ahead` permits
--                                                           already in flight
--    {1, wait_us, 0, limit, slot_epoch, workers}   gate closed or paced: wait, then call again
--    {2, expiry_us, 0, limit, slot_epoch, workers} every permit taken: wait for a wake-up
--                                                  (at most until the oldest lease expires)
local ctl, permits, order, wake, workers, bkey, rkey =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local now = now_ms()
local lease_ttl = tonumber(ARGV[3])
local state_ttl = tonumber(ARGV[11])
local worker_ttl = tonumber(ARGV[12])
local st = load_limit(ctl, tonumber(ARGV[4]), tonumber(ARGV[5]))
purge(permits, order, wake, now, st.limit, 2 * lease_ttl)
local deposits = tonumber(ARGV[7])
if deposits > 0 then
  budget(bkey, now, deposits, false, tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]),
         state_ttl)
end
redis.call('ZADD', workers, now + worker_ttl, ARGV[2])
redis.call('ZREMRANGEBYSCORE', workers, '-inf', now)
redis.call('PEXPIRE', workers, worker_ttl)
local nworkers = redis.call('ZCARD', workers)
if st.dirty then save_limit(ctl, st, state_ttl) end

local rv = redis.call('HMGET', rkey, 'blocked', 'epoch', 'rate', 'tokens', 'tlast', 'started')
if not rv[6] then
  redis.call('HSET', rkey, 'started', now)
  redis.call('PEXPIRE', rkey, state_ttl)
end
local blocked = tonumber(rv[1]) or 0
local repoch = tonumber(rv[2]) or 0
local gate = math.max(0, blocked - now)
local slot = tonumber(ARGV[6])
local send_epoch = slot
if slot < 0 or gate > 0 then
  -- RatePacer.reserve: wait for the gate, then take a token (borrowing from the future).
  -- A caller keeps its slot while it waits for a permit; a gate closing meanwhile costs it
  -- its slot, and it takes a new one.
  local wait = gate
  local rate = tonumber(rv[3])
  send_epoch = repoch
  slot = -1
  if rate then
    local t = now + gate
    local tokens = tonumber(rv[4]) or 0
    local last = tonumber(rv[5]) or t
    if t > last then
      tokens = math.min(math.max(rate * BURST, 1), tokens + (t - last) * rate / 1000)
      last = t
    end
    tokens = tokens - 1
    redis.call('HSET', rkey, 'tokens', tokens, 'tlast', last)
    if tokens < 0 then wait = wait - tokens * 1000 / rate end
    slot = repoch
  end
  if wait > 0 then
    return {1, math.ceil(wait * 1000), 0, st.limit, slot, nworkers}
  end
end

if redis.call('ZCARD', permits) >= st.limit then
  local first = redis.call('ZRANGE', permits, 0, 0, 'WITHSCORES')
  local expiry = lease_ttl
  if first[2] then expiry = math.max(0, tonumber(first[2]) - now) end
  return {2, math.ceil(expiry * 1000), 0, st.limit, slot, nworkers}
end
local ahead = redis.call('ZCARD', permits)
local seq = redis.call('HINCRBY', ctl, 'seq', 1)
redis.call('PEXPIRE', ctl, state_ttl)
redis.call('ZADD', permits, now + lease_ttl, ARGV[1])
redis.call('ZADD', order, seq, ARGV[1])
redis.call('PEXPIRE', permits, 2 * lease_ttl)
redis.call('PEXPIRE', order, 2 * lease_ttl)
return {0, seq, st.epoch, st.limit, send_epoch, nworkers, ahead}
"""
)

REPORT: Final = (
    _PRELUDE
    + r"""
-- A throttling answer, applied at once. KEYS: ctl permits order wake rate
-- ARGV: kind (1 = plan limit, 2 = rate limit) ahead permit_epoch retry_after_ms rate_epoch
--       initial ceiling lease_ttl_ms state_ttl_ms beta recovery min_rate
-- -> {old_limit, new_limit, gate_closed, pace_milli_rps (-1: not pacing)}
local ctl, permits, order, wake, rkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = now_ms()
local kind = tonumber(ARGV[1])
local lease_ttl = tonumber(ARGV[8])
local state_ttl = tonumber(ARGV[9])
local ceiling = tonumber(ARGV[7])
local st = load_limit(ctl, tonumber(ARGV[6]), ceiling)
local old = st.limit
purge(permits, order, wake, now, st.limit, 2 * lease_ttl)
if kind == 1 and tonumber(ARGV[3]) == st.epoch then
  -- AdaptiveLimiter.on_concurrency_exceeded: cut to the requests already in flight when the
  -- rejected one was sent (what the server had admitted), at least by one, once per round
  -- trip (only permits taken since the last cut may cut again)
  local older = tonumber(ARGV[2])
  st.slow = 0
  st.growth = 0
  st.epoch = st.epoch + 1
  st.limit = math.max(1, math.min(st.limit - 1, older))
  st.dirty = true
end
if st.dirty then save_limit(ctl, st, state_ttl) end
local closed, milli = rate_response(rkey, now, kind == 2, tonumber(ARGV[4]),
  tonumber(ARGV[5]), tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12]), state_ttl)
return {old, st.limit, closed, milli}
"""
)

RELEASE: Final = (
    _PRELUDE
    + r"""
-- Return leases, after feeding their (non-throttling) answer in. KEYS: ctl permits order wake rate
-- ARGV: signal (0 none, 1 success, 2 other answer) initial ceiling lease_ttl_ms state_ttl_ms
--       beta recovery min_rate lease...
-- -> {old_limit, new_limit, removed, slow_start}
local ctl, permits, order, wake, rkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local signal = tonumber(ARGV[1])
local ceiling = tonumber(ARGV[3])
local lease_ttl = tonumber(ARGV[4])
local state_ttl = tonumber(ARGV[5])
local st = load_limit(ctl, tonumber(ARGV[2]), ceiling)
local old = st.limit
if signal == 1 and not (ceiling > 0 and st.limit >= ceiling)
   and redis.call('ZCARD', permits) * 2 >= st.limit then
  -- AdaptiveLimiter.on_success: +1 per success in slow start, else +1 per round trip
  if st.slow == 1 then
    st.limit = st.limit + 1
  else
    st.growth = st.growth + 1 / st.limit
    if st.growth >= 1 then st.growth = 0; st.limit = st.limit + 1 end
  end
  st.dirty = true
end
if st.dirty then save_limit(ctl, st, state_ttl) end
if signal > 0 then
  local now = now_ms()
  rate_response(rkey, now, false, -1, -1, tonumber(ARGV[6]), tonumber(ARGV[7]),
                tonumber(ARGV[8]), state_ttl)
end
local removed = 0
for i = 9, #ARGV do
  removed = removed + redis.call('ZREM', permits, ARGV[i])
  redis.call('ZREM', order, ARGV[i])
end
wake_push(wake, removed + math.max(0, st.limit - old), math.max(1, st.limit), 2 * lease_ttl)
return {old, st.limit, removed, st.slow}
"""
)

RENEW: Final = (
    _PRELUDE
    + r"""
-- The heartbeat: extend the leases still held; expired ones stay lost (no silent re-acquire).
-- KEYS: permits order wake workers ctl. ARGV: lease_ttl_ms worker worker_ttl_ms lease...
-- -> {lost, workers}
local permits, order, wake, workers, ctl = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = now_ms()
local lease_ttl = tonumber(ARGV[1])
local worker_ttl = tonumber(ARGV[3])
local limit = tonumber(redis.call('HGET', ctl, 'limit')) or 1
purge(permits, order, wake, now, math.max(1, limit), 2 * lease_ttl)
redis.call('ZADD', workers, now + worker_ttl, ARGV[2])
redis.call('ZREMRANGEBYSCORE', workers, '-inf', now)
redis.call('PEXPIRE', workers, worker_ttl)
local lost = 0
for i = 4, #ARGV do
  if redis.call('ZSCORE', permits, ARGV[i]) then
    redis.call('ZADD', permits, 'XX', now + lease_ttl, ARGV[i])
  else
    lost = lost + 1
  end
end
if #ARGV >= 4 then
  redis.call('PEXPIRE', permits, 2 * lease_ttl)
  redis.call('PEXPIRE', order, 2 * lease_ttl)
end
return {lost, redis.call('ZCARD', workers)}
"""
)

BUDGET: Final = (
    _PRELUDE
    + r"""
-- Deposit requests and withdraw one retry. KEYS: budget
-- ARGV: deposits ratio min_per_second ttl state_ttl_ms -> 1 allowed, 0 spent
return budget(KEYS[1], now_ms(), tonumber(ARGV[1]), true, tonumber(ARGV[2]),
              tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
"""
)
