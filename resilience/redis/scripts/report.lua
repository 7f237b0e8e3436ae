-- A throttling answer, applied at once. KEYS: ctl permits order wake rate
-- ARGV: kind (1 = plan limit, 2 = rate limit, 3 = an announced quota spent: hold the origin
--       until its reset, retry_after_ms, as a 429's gate but without a cut) lease
--       permit_epoch retry_after_ms rate_epoch
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
  -- AdaptiveLimiter.on_concurrency_exceeded: cut (aimd_cut) to the requests already in
  -- flight when the rejected one was sent (what the server had admitted), once per round
  -- trip (only permits taken since the last cut may cut again). Sends race between processes:
  -- a permit granted up to REORDER_MS after the rejected one may have reached the server
  -- first, so it counts as sent before it.
  local granted = tonumber(redis.call('ZSCORE', order, ARGV[2]))
  local older = redis.call('ZCOUNT', order, '-inf', (granted or now) + REORDER_MS)
  if granted then older = older - 1 end
  st.slow = 0
  st.growth = 0
  st.epoch = st.epoch + 1
  st.limit = aimd_cut(st.limit, older)
  st.dirty = true
end
if st.dirty then save_limit(ctl, st, state_ttl) end
if kind == 3 then
  local p = pacer_load(rkey)
  local closed = pacer_close(p, now, now + tonumber(ARGV[4]))
  pacer_save(rkey, p)
  redis.call('PEXPIRE', rkey, state_ttl)
  local milli = -1
  if p.rate then milli = math.floor(p.rate * 1000) end
  return {old, st.limit, closed, milli}
end
local closed, milli = rate_response(rkey, now, kind == 2, tonumber(ARGV[4]), tonumber(ARGV[5]),
                                    state_ttl)
return {old, st.limit, closed, milli}
