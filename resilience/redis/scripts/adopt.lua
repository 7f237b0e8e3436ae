-- The probe, and a rejoin that does not overshoot: count the leases this worker already has in
-- flight (requests its local fallback admitted while Redis was away) against the shared limit,
-- so the fleet grants nothing on top of them until they finish. Also a liveness heartbeat.
-- KEYS: permits order wake workers ctl. ARGV: lease_ttl_ms worker worker_ttl_ms lease...
-- -> {held, workers}
local permits, order, wake, workers, ctl = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = now_ms()
local lease_ttl = tonumber(ARGV[1])
local worker_ttl = tonumber(ARGV[3])
heartbeat(permits, order, wake, workers, ctl, ARGV[2], lease_ttl, worker_ttl, now)
for i = 4, #ARGV do
  redis.call('ZADD', permits, now + lease_ttl, ARGV[i])
  redis.call('ZADD', order, now, ARGV[i])
end
if #ARGV >= 4 then
  redis.call('PEXPIRE', permits, 2 * lease_ttl)
  redis.call('PEXPIRE', order, 2 * lease_ttl)
end
return {redis.call('ZCARD', permits), redis.call('ZCARD', workers)}
