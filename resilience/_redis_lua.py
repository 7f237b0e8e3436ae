"""The Lua scripts behind ``resilience.redis.RedisStore``.

Every script reads the time from Redis (``TIME``), never from a client, and touches only the
keys it is given, all under one hash tag, so it runs unchanged on Redis Cluster. Keys of one
namespace ``NS`` (prefix ``resilience:{NS}:``):

``ctl``      HASH  limit, epoch (cuts so far), slow (1 = slow start), growth
``permits``  ZSET  lease id -> lease deadline (ms); a permit is a lease
``order``    ZSET  lease id -> grant time (ms), to count the requests sent before a rejected one
``wake``     LIST  one token per freed permit, capped at the limit; waiters BLPOP it
``workers``  ZSET  worker id -> liveness deadline (ms)
``budget``   HASH  the retry budget's per-second deposit and withdrawal slots
``rate:O``   HASH  the rate gate and pacer of origin ``O``

The rules are those of ``AdaptiveLimiter`` (``_concurrency.py``), ``RatePacer``
(``_pacing.py``) and ``RetryBudget`` (``_budget.py``).
"""

from __future__ import annotations

from typing import Final

__all__ = ["ACQUIRE", "BUDGET", "RELEASE", "RENEW", "REPORT"]

_PRELUDE: Final = r"""
if redis.replicate_commands then redis.replicate_commands() end

-- the pacer lets at most 100 ms of sends go at once: a reopened gate lets out a trickle
local BURST_MS = 100
-- how much later a permit may be granted and its request still reach the server first
local REORDER_MS = 3
-- RatePacer's defaults: cut to 70 %, back at the cut rate 1 s later, never below 0.5/s
local BETA, RECOVERY, MIN_RATE = 0.7, 1.0, 0.5
-- pacing switches itself off this long after the last 429
local IDLE_RESET_MS = 30000

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

-- drop expired leases (their holder died or stalled); returns how many
local function purge(permits, order, now)
  local expired = redis.call('ZRANGEBYSCORE', permits, '-inf', now, 'LIMIT', 0, 500)
  if #expired > 0 then
    redis.call('ZREM', permits, unpack(expired))
    redis.call('ZREM', order, unpack(expired))
  end
  return #expired
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
-- the rate a cut starts from is what the server let through: the non-429 responses per
-- second over the last second (a sliding window of two 1 s buckets), or since the first
-- request over at least 10 ms, erring high on purpose as WindowRate does. Until the server
-- has let anything through, the 429s are counted instead: an estimate, not 0.)
local function rate_response(key, now, limited, retry_after, epoch_sent, state_ttl)
  local v = redis.call('HMGET', key, 'blocked', 'epoch', 'rate', 'wmax', 'lastfail', 'wcur',
                       'wprev', 'wstart', 'started', 'tcur', 'tprev')
  local blocked = tonumber(v[1]) or 0
  local epoch = tonumber(v[2]) or 0
  local rate = tonumber(v[3])
  local wmax = tonumber(v[4]) or 0
  local lastfail = tonumber(v[5]) or now
  local cur = tonumber(v[6]) or 0
  local prev = tonumber(v[7]) or 0
  local wstart = tonumber(v[8]) or now
  local started = tonumber(v[9]) or now
  local tcur = tonumber(v[10]) or 0
  local tprev = tonumber(v[11]) or 0
  if now - wstart >= 2000 then
    prev, cur, tprev, tcur, wstart = 0, 0, 0, 0, now
  elseif now - wstart >= 1000 then
    prev, cur, tprev, tcur, wstart = cur, 0, tcur, 0, wstart + 1000
  end
  if limited then tcur = tcur + 1 else cur = cur + 1 end
  local function per_second(p, c)
    if now - started < 1000 then return (p + c) / math.max((now - started) / 1000, 0.01) end
    return p * (1 - (now - wstart) / 1000) + c
  end
  local through = per_second(prev, cur)
  if prev + cur == 0 then through = per_second(tprev, tcur) end
  local closed = 0
  local new_rate = nil
  if limited then
    redis.call('HSET', key, 'throttled', now)
    if retry_after >= 0 and now + retry_after > blocked then
      if blocked <= now then closed = 1 end
      blocked = now + retry_after
    end
    if epoch_sent == epoch then
      -- a cut, at most once per round trip: only sends paced since the last cut may cut
      epoch = epoch + 1
      wmax = math.max(through, MIN_RATE)
      lastfail = now
      new_rate = wmax * BETA
    end
  elseif rate then
    -- CUBIC: back at the rate that was cut `recovery` seconds after the cut, then probing,
    -- at most to twice what goes through; a success never lowers the rate (after an idle
    -- spell little goes through, which says nothing of the server's limit)
    local scale = math.max(wmax * (1 - BETA) / (RECOVERY ^ 3), 1e-9)
    local dt = (now - lastfail) / 1000 - RECOVERY
    new_rate = math.min(scale * dt ^ 3 + wmax, math.max(2 * through, rate))
  end
  if new_rate then
    -- a new rate spaces the sends scheduled from now on; those already scheduled keep their
    -- time (no re-pricing of borrowed slots, which would open a hole in the schedule)
    if rate == nil then redis.call('HSET', key, 'tat', now + BURST_MS) end
    rate = math.max(new_rate, MIN_RATE)
    redis.call('HSET', key, 'rate', rate, 'wmax', wmax, 'lastfail', lastfail)
  end
  redis.call('HSET', key, 'blocked', blocked, 'epoch', epoch, 'wcur', cur, 'wprev', prev,
             'tcur', tcur, 'tprev', tprev, 'wstart', wstart, 'started', started)
  redis.call('PEXPIRE', key, state_ttl)
  local milli = -1
  if rate then milli = math.floor(rate * 1000) end
  return closed, milli
end

-- Return leases given as (lease id, answer) pairs from args[first] on, the answer being 0 (none:
-- a transport error), 1 (a success) or 2 (another answer that hit no limit), after feeding the
-- answers in: AdaptiveLimiter.on_success for a success, the pacer for any answer. A success
-- counts while the limit is used (in flight * 2 >= limit): +1 in slow start, else +1/limit.
-- Returns how many of the leases were still held.
local function release_leases(st, permits, order, rkey, ceiling, args, first, now, state_ttl)
  local removed = 0
  for i = first, #args - 1, 2 do
    local lease, answer = args[i], tonumber(args[i + 1])
    local in_flight = redis.call('ZCARD', permits)
    redis.call('ZREM', order, lease)
    -- only a lease still held counts: a release run twice (a retried call) or of an expired
    -- lease feeds nothing in
    if redis.call('ZREM', permits, lease) == 1 then
      removed = removed + 1
      if answer == 1 and not (ceiling > 0 and st.limit >= ceiling)
         and in_flight * 2 >= st.limit then
        if st.slow == 1 then
          st.limit = st.limit + 1
        else
          st.growth = st.growth + 1 / st.limit
          if st.growth >= 1 then st.growth = 0; st.limit = st.limit + 1 end
        end
        st.dirty = true
      end
      if answer > 0 then rate_response(rkey, now, false, -1, -1, state_ttl) end
    end
  end
  return removed
end
"""

ACQUIRE: Final = (
    _PRELUDE
    + r"""
-- Returns this process's finished leases (as RELEASE does), then asks for a permit.
-- KEYS: ctl permits order wake workers budget rate
-- ARGV: lease worker lease_ttl_ms initial ceiling slot_epoch deposits ratio min_per_second
--       budget_ttl state_ttl_ms worker_ttl_ms [lease answer]...
-- slot_epoch: -1, or the pacing epoch of the sending slot reserved by an earlier call (a send
-- keeps the epoch of its slot, so sends scheduled before a cut do not cut again)
-- -> {0, ahead, epoch, limit, send_epoch, workers, paced}  granted; `ahead` permits were held
--    {1, wait_us, 0, limit, slot_epoch, workers, paced}    gate closed or paced: wait, call
--                                                          again with the slot's epoch
--    {2, expiry_us, 0, limit, slot_epoch, workers, paced}  every permit taken: wait for a
--                                                          wake-up (at most until the oldest
--                                                          lease expires)
-- paced: 1 while the origin's sends are paced or its gate is closed (the caller then
-- reserves slots one at a time per process, so each reservation sees the current rate)
local ctl, permits, order, wake, workers, bkey, rkey =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local ceiling = tonumber(ARGV[5])
if redis.call('ZSCORE', permits, ARGV[1]) then
  -- this lease was granted already (the call is a retry whose first reply was lost): the
  -- same grant again, nothing changed
  local v = redis.call('HMGET', ctl, 'limit', 'epoch')
  local limit = tonumber(v[1]) or tonumber(ARGV[4])
  if ceiling > 0 and limit > ceiling then limit = ceiling end
  local rv = redis.call('HMGET', rkey, 'blocked', 'epoch', 'rate')
  local paced = 0
  if rv[3] or (tonumber(rv[1]) or 0) > now_ms() then paced = 1 end
  local send_epoch = tonumber(ARGV[6])
  if send_epoch < 0 then send_epoch = tonumber(rv[2]) or 0 end
  return {0, math.max(0, redis.call('ZCARD', permits) - 1), tonumber(v[2]) or 0,
          math.max(1, limit), send_epoch, redis.call('ZCARD', workers), paced}
end
local now = now_ms()
local lease_ttl = tonumber(ARGV[3])
local state_ttl = tonumber(ARGV[11])
local worker_ttl = tonumber(ARGV[12])
local st = load_limit(ctl, tonumber(ARGV[4]), ceiling)
local old = st.limit
local freed = purge(permits, order, now)
  + release_leases(st, permits, order, rkey, ceiling, ARGV, 13, now, state_ttl)
if st.dirty then save_limit(ctl, st, state_ttl) end
freed = freed + math.max(0, st.limit - old)
local function reply(r, took)
  -- wake waiters for the room freed here and not taken by this call
  wake_push(wake, freed - took, math.max(1, st.limit), 2 * lease_ttl)
  return r
end

local deposits = tonumber(ARGV[7])
if deposits > 0 then
  budget(bkey, now, deposits, false, tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]),
         state_ttl)
end
redis.call('ZADD', workers, now + worker_ttl, ARGV[2])
redis.call('ZREMRANGEBYSCORE', workers, '-inf', now)
redis.call('PEXPIRE', workers, worker_ttl)
local nworkers = redis.call('ZCARD', workers)

local rv = redis.call('HMGET', rkey, 'blocked', 'epoch', 'rate', 'tat', 'started', 'throttled')
if not rv[5] then
  redis.call('HSET', rkey, 'started', now)
  redis.call('PEXPIRE', rkey, state_ttl)
end
if rv[3] and now - (tonumber(rv[6]) or 0) > IDLE_RESET_MS then
  -- no 429 for a while: pacing off; the next burst goes at full speed and, if the limit is
  -- still there, learns it again from one 429 (RatePacer's idle_reset)
  redis.call('HDEL', rkey, 'rate', 'tat', 'wmax', 'lastfail')
  rv[3] = false
end
local blocked = tonumber(rv[1]) or 0
local repoch = tonumber(rv[2]) or 0
local gate = math.max(0, blocked - now)
local paced = 0
if rv[3] or gate > 0 then paced = 1 end
local slot = tonumber(ARGV[6])
local send_epoch = slot
if slot < 0 or gate > 0 then
  -- Wait for the gate, then take the next sending slot of the pacing schedule (GCRA: `tat`
  -- is when the schedule is free again; up to BURST_MS of slots may go at once). A caller
  -- keeps its slot while it waits for a permit; a gate closing meanwhile costs it its slot.
  local wait = gate
  local rate = tonumber(rv[3])
  send_epoch = repoch
  slot = -1
  if rate then
    local t = now + gate
    local tat = math.max(tonumber(rv[4]) or t, t)
    local send = math.max(t, tat - BURST_MS)
    redis.call('HSET', rkey, 'tat', tat + 1000 / rate)
    wait = send - now
    slot = repoch
  end
  if wait > 0 then
    return reply({1, math.ceil(wait * 1000), 0, st.limit, slot, nworkers, paced}, 0)
  end
end

local ahead = redis.call('ZCARD', permits)
if ahead >= st.limit then
  local first = redis.call('ZRANGE', permits, 0, 0, 'WITHSCORES')
  local expiry = lease_ttl
  if first[2] then expiry = math.max(0, tonumber(first[2]) - now) end
  return reply({2, math.ceil(expiry * 1000), 0, st.limit, slot, nworkers, paced}, 0)
end
redis.call('ZADD', permits, now + lease_ttl, ARGV[1])
redis.call('ZADD', order, now, ARGV[1])
redis.call('PEXPIRE', permits, 2 * lease_ttl)
redis.call('PEXPIRE', order, 2 * lease_ttl)
redis.call('PEXPIRE', ctl, state_ttl)
return reply({0, ahead, st.epoch, st.limit, send_epoch, nworkers, paced}, 1)
"""
)

REPORT: Final = (
    _PRELUDE
    + r"""
-- A throttling answer, applied at once. KEYS: ctl permits order wake rate
-- ARGV: kind (1 = plan limit, 2 = rate limit) lease permit_epoch retry_after_ms rate_epoch
--       initial ceiling lease_ttl_ms state_ttl_ms
-- -> {old_limit, new_limit, gate_closed, pace_milli_rps (-1: not pacing)}
local ctl, permits, order, wake, rkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = now_ms()
local kind = tonumber(ARGV[1])
local lease_ttl = tonumber(ARGV[8])
local state_ttl = tonumber(ARGV[9])
local st = load_limit(ctl, tonumber(ARGV[6]), tonumber(ARGV[7]))
local old = st.limit
wake_push(wake, purge(permits, order, now), math.max(1, st.limit), 2 * lease_ttl)
if kind == 1 and tonumber(ARGV[3]) == st.epoch then
  -- AdaptiveLimiter.on_concurrency_exceeded: cut to our requests already in flight when the
  -- rejected one was sent (what the server had admitted), at least by one, once per round
  -- trip (only permits taken since the last cut may cut again). Sends race between processes:
  -- a permit granted up to REORDER_MS after the rejected one may have reached the server
  -- first, so it counts as sent before it.
  local granted = tonumber(redis.call('ZSCORE', order, ARGV[2]))
  local older = redis.call('ZCOUNT', order, '-inf', (granted or now) + REORDER_MS)
  if granted then older = older - 1 end
  st.slow = 0
  st.growth = 0
  st.epoch = st.epoch + 1
  -- at most halve per round trip: "older" undercounts when older requests arrive last
  st.limit = math.max(1, math.min(st.limit - 1, math.max(older, math.floor(st.limit / 2))))
  st.dirty = true
end
if st.dirty then save_limit(ctl, st, state_ttl) end
local closed, milli = rate_response(rkey, now, kind == 2, tonumber(ARGV[4]), tonumber(ARGV[5]),
                                    state_ttl)
return {old, st.limit, closed, milli}
"""
)

RELEASE: Final = (
    _PRELUDE
    + r"""
-- Return leases after feeding their answers in (see release_leases).
-- KEYS: ctl permits order wake rate
-- ARGV: initial ceiling lease_ttl_ms state_ttl_ms [lease answer]...
-- -> {old_limit, new_limit, removed, slow_start}
local ctl, permits, order, wake, rkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ceiling = tonumber(ARGV[2])
local lease_ttl = tonumber(ARGV[3])
local state_ttl = tonumber(ARGV[4])
local st = load_limit(ctl, tonumber(ARGV[1]), ceiling)
local old = st.limit
local removed = release_leases(st, permits, order, rkey, ceiling, ARGV, 5, now_ms(), state_ttl)
if st.dirty then save_limit(ctl, st, state_ttl) end
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
wake_push(wake, purge(permits, order, now), math.max(1, limit), 2 * lease_ttl)
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
