-- A throttling answer, applied at once. KEYS: ctl permits order wake rate
-- ARGV: kind (1 = plan limit, 2 = rate limit, 3 = an announced quota spent: into the quota
--       count at once, which holds the origin until its reset or aligned end) lease
--       permit_epoch retry_after_ms rate_epoch
--       initial ceiling lease_ttl_ms state_ttl_ms quota (kind 3: the answer as the release
--       carries it; else the send's number in the quota count, 0: not counted)
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
  -- the answer's quota now, not with the release: the fleet holds from this answer on (the
  -- release feeds it again, which changes nothing)
  local p = pacer_load(rkey)
  local q = quota_load(rkey)
  quota_roll(q, now)
  local _, a = quota_parse(ARGV[10])
  local closed = 0
  if a then
    -- a counted send is in flight until its release
    local seq, mine = a[1], 0
    if seq > 0 then mine = 1 end
    local open = not quota_holding(q, mine) and p.blocked <= now
    if seq <= 0 then seq = q.sends end  -- sent before counting began: the latest
    -- its release takes it out of flight
    quota_answer(q, seq, a[2], a[3], a[4], a[5], now, a[6], a[7], 0, 0, 0)
    if open and quota_holding(q, mine) then closed = 1 end
    quota_save(rkey, q)
  end
  redis.call('PEXPIRE', rkey, state_ttl)
  local milli = -1
  if p.rate then milli = math.floor(p.rate * 1000) end
  return {old, st.limit, closed, milli}
end
local closed, milli = rate_response(rkey, now, kind == 2, tonumber(ARGV[4]), tonumber(ARGV[5]),
                                    state_ttl, tonumber(ARGV[10]) or 0)
return {old, st.limit, closed, milli}
