-- The heartbeat: extend the leases still held; expired ones stay lost (no silent re-acquire).
-- KEYS: permits order wake workers ctl. ARGV: lease_ttl_ms worker worker_ttl_ms lease...
-- -> {lost, workers}
local permits, order, wake, workers, ctl = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = now_ms()
local lease_ttl = tonumber(ARGV[1])
local worker_ttl = tonumber(ARGV[3])
heartbeat(permits, order, wake, workers, ctl, ARGV[2], lease_ttl, worker_ttl, now)
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
