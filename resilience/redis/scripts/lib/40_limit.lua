-- The shared adaptive limit (AdaptiveLimiter, resilience/_concurrency.py).

-- grow_limit: +1 in slow start, else +1/limit, only while the limit is used
local function aimd_grow(limit, slow, growth, in_flight, ceiling)
  if ceiling > 0 and limit >= ceiling then return limit, growth end
  if in_flight * 2 < limit then return limit, growth end
  if slow == 1 then return limit + 1, growth end
  growth = growth + 1 / limit
  if growth >= 1 then return limit + 1, 0 end
  return limit, growth
end

-- cut_limit: to the requests older than the rejected one, at least by one, at most by
-- half, never below 1
local function aimd_cut(limit, older)
  return math.max(1, math.min(limit - 1, math.max(older, math.floor(limit / 2))))
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

-- Return leases given as (lease id, answer) pairs from args[first] on, the answer being 0
-- (none: a transport error), 1 (a success) or 2 (another answer that hit no limit), after
-- feeding the answers in: aimd_grow for a success, the pacer for any answer, the quota count
-- for an answer that announced one or for a counted send (quota_parse).
-- Returns how many of the leases were still held.
local function release_leases(st, permits, order, rkey, ceiling, args, first, now, state_ttl)
  local removed = 0
  for i = first, #args - 1, 2 do
    local lease, answer, quota = args[i], quota_parse(args[i + 1])
    local in_flight = redis.call('ZCARD', permits)
    redis.call('ZREM', order, lease)
    -- only a lease still held counts: a release run twice (a retried call) or of an expired
    -- lease feeds nothing in
    if redis.call('ZREM', permits, lease) == 1 then
      removed = removed + 1
      if answer == 1 then
        local limit, growth = aimd_grow(st.limit, st.slow, st.growth, in_flight, ceiling)
        if limit ~= st.limit or growth ~= st.growth then
          st.limit, st.growth, st.dirty = limit, growth, true
        end
      end
      if answer > 0 then rate_response(rkey, now, false, -1, -1, state_ttl, 0) end
      if quota then
        local q = quota_load(rkey)
        quota_roll(q, now)
        local seq, counted = quota[1], 1
        if seq <= 0 then seq, counted = q.sends, 0 end  -- sent before counting began: the latest
        quota_answer(q, seq, quota[2], quota[3], quota[4], quota[5], now, quota[6], quota[7], 0,
                     counted, redis.call('ZCARD', permits))
        quota_save(rkey, q)
      end
    end
  end
  return removed
end
