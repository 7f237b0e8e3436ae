-- Shared by every script. The constants in CAPITALS are not written here: the loader
-- (resilience/redis/_scripts.py) renders them in from the Python rules before this file.
if redis.replicate_commands then redis.replicate_commands() end

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

-- the hash fields `fields` of `key` as numbers (nil where absent)
local function hash_load(key, fields)
  local v = redis.call('HMGET', key, unpack(fields))
  local t = {}
  for i, name in ipairs(fields) do t[name] = tonumber(v[i]) end
  return t
end

-- write the fields of `t` back: set those it has, delete those it lacks
local function hash_save(key, fields, t)
  local set, del = {}, {}
  for _, name in ipairs(fields) do
    if t[name] ~= nil then
      set[#set + 1] = name; set[#set + 1] = t[name]
    else
      del[#del + 1] = name
    end
  end
  if #set > 0 then redis.call('HSET', key, unpack(set)) end
  if #del > 0 then redis.call('HDEL', key, unpack(del)) end
end

-- a worker's heartbeat (adopt, renew): purge expired leases (waking as many waiters as that
-- freed), then mark `worker` alive for worker_ttl and drop the workers that are not
local function heartbeat(permits, order, wake, workers, ctl, worker, lease_ttl, worker_ttl, now)
  local limit = tonumber(redis.call('HGET', ctl, 'limit')) or 1
  wake_push(wake, purge(permits, order, now), math.max(1, limit), 2 * lease_ttl)
  redis.call('ZADD', workers, now + worker_ttl, worker)
  redis.call('ZREMRANGEBYSCORE', workers, '-inf', now)
  redis.call('PEXPIRE', workers, worker_ttl)
end
