-- Breaker.admit for one attempt. KEYS: brk pending
-- ARGV: ticket deadline_in_ms (-1: none) pending_ttl_ms commit (0: only look), then the
--       settings (see lib/50_breaker.lua)
-- -> {kind (0 pass, 1 hold, 2 refuse), probe, epoch, wait_ms (-1: until woken), state, last,
--     suspect (1: the window holds outage failures and nothing else: a view of it must not
--     be trusted)}
local key, pending = KEYS[1], KEYS[2]
local now = now_ms()
local ticket, deadline_in, pending_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local commit = ARGV[4] == '1'
local cfg = brk_settings(5)
local b = brk_load(key)
local deadline = nil
if deadline_in >= 0 then deadline = now + deadline_in end
if b.state == 'open' then
  local probe_at = b.opened + brk_break(cfg, b.opens)
  if now < probe_at then
    if deadline and deadline <= probe_at then
      return {2, 0, b.epoch, probe_at - now, b.state, b.last, 0}
    end
    return {1, 0, b.epoch, probe_at - now, b.state, b.last, 0}
  end
  b.state = 'half_open'
  b.probe = ''
  b.probe_since = -1
end
if b.state == 'half_open' then
  if b.probe_since < 0 or now >= b.probe_since + cfg.probe_timeout then
    -- one probe for the whole fleet: the token with its expiry is this ticket's
    if commit then
      b.probe = ticket
      b.probe_since = now
    end
    brk_save(key, b, cfg)
    return {0, 1, b.epoch, 0, b.state, b.last, 0}
  end
  brk_save(key, b, cfg)
  return {1, 0, b.epoch, b.probe_since + cfg.probe_timeout - now, b.state, b.last, 0}
end
local total, failures = brk_counts(key, cfg, now)
local suspect = 0
if failures > 0 and failures == total then suspect = 1 end
local in_flight = brk_pending(pending, now)
if suspect == 1 and failures + in_flight >= cfg.min then
  return {1, 0, b.epoch, -1, b.state, b.last, 1}
end
if commit then
  redis.call('ZADD', pending, now + pending_ttl, ticket)
  redis.call('PEXPIRE', pending, pending_ttl)
end
return {0, 0, b.epoch, 0, b.state, b.last, suspect}
