-- Returns this process's finished leases (as RELEASE does), then asks for a permit.
-- KEYS: ctl permits order wake workers budget rate
-- ARGV: lease worker lease_ttl_ms initial ceiling slot_epoch deposits ratio min_per_second
--       budget_ttl state_ttl_ms worker_ttl_ms [lease answer]...
-- slot_epoch: -1, or the pacing epoch of the sending slot reserved by an earlier call (a send
-- keeps the epoch of its slot, so sends scheduled before a cut do not cut again)
-- -> {0, ahead, epoch, limit, send_epoch, workers, paced, seq}  granted; `ahead` permits
--                                                     were held; seq: the send's number
--                                                     in the quota count (0: not counting)
--    {1, wait_us, 0, limit, slot_epoch, workers, paced, 0}  gate closed, quota spent or paced:
--                                                     wait, call again with the slot's epoch
--    {2, expiry_us, 0, limit, slot_epoch, workers, paced, 0}  every permit taken: wait for a
--                                                     wake-up (at most until the oldest
--                                                     lease expires)
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
          math.max(1, limit), send_epoch, redis.call('ZCARD', workers), paced, 0}
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

local rv = redis.call('HMGET', rkey, 'blocked', 'epoch', 'rate', 'tat', 'throttled')
if rv[3] and now - (tonumber(rv[5]) or 0) > IDLE_RESET_MS then
  -- no 429 for a while: pacing off; the next burst goes at full speed and, if the limit is
  -- still there, learns it again from one 429 (RatePacer's idle_reset)
  redis.call('HDEL', rkey, 'rate', 'tat', 'wmax', 'lastfail', 'cbeta', 'crec', 'openat', 'openok')
  rv[3] = false
end
local q = quota_load(rkey)
quota_roll(q, now)
if q.qfly > 0 then
  -- no more sends in flight than leases held: a crashed worker's expire, and so do its sends
  q.qfly = math.min(q.qfly, redis.call('ZCARD', permits))
end
local counting = q.qleft ~= nil
local blocked = tonumber(rv[1]) or 0
local repoch = tonumber(rv[2]) or 0
-- a spent quota holds the origin until its reset, as a closed gate does
local gate = math.max(0, blocked - now, quota_wait(q, now))
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
    if counting or q.qreset then quota_save(rkey, q) end
    return reply({1, math.ceil(wait * 1000), 0, st.limit, slot, nworkers, paced, 0}, 0)
  end
end

local ahead = redis.call('ZCARD', permits)
if ahead >= st.limit then
  local first = redis.call('ZRANGE', permits, 0, 0, 'WITHSCORES')
  local expiry = lease_ttl
  if first[2] then expiry = math.max(0, tonumber(first[2]) - now) end
  if counting or q.qreset then quota_save(rkey, q) end
  return reply({2, math.ceil(expiry * 1000), 0, st.limit, slot, nworkers, paced, 0}, 0)
end
redis.call('ZADD', permits, now + lease_ttl, ARGV[1])
redis.call('ZADD', order, now, ARGV[1])
redis.call('PEXPIRE', permits, 2 * lease_ttl)
redis.call('PEXPIRE', order, 2 * lease_ttl)
redis.call('PEXPIRE', ctl, state_ttl)
local seq = 0
if counting then
  quota_take(q, now)
  q.sends = q.sends + 1
  seq = q.sends
end
if counting or q.qreset then quota_save(rkey, q) end
return reply({0, ahead, st.epoch, st.limit, send_epoch, nworkers, paced, seq}, 1)
