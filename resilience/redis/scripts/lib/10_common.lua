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
