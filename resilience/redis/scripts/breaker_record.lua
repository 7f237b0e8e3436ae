-- Breaker.record / Breaker.abandon for one attempt. KEYS: brk pending
-- ARGV: ticket ('' for one not counted in flight) probe (0/1) epoch tally (s: success,
--       f: failure, n: neutral, a: abandoned) code successes (earlier successes of this
--       worker, batched), then the settings (see lib/50_breaker.lua)
-- -> {changed (0/1), state, wait_ms until the probe (-1: not open), last,
--     suspect (1: the window holds outage failures and nothing else)}
local key, pending = KEYS[1], KEYS[2]
local now = now_ms()
local ticket, probe, epoch, tally, code = ARGV[1], ARGV[2] == '1', tonumber(ARGV[3]), ARGV[4],
                                          ARGV[5]
local successes = tonumber(ARGV[6])
local cfg = brk_settings(7)
local b = brk_load(key)
if successes > 0 and b.state == 'closed' then
  brk_add(key, cfg, now, false, successes)
end
local function reply(changed, suspect)
  local wait = -1
  if b.state == 'open' then wait = b.opened + brk_break(cfg, b.opens) - now end
  return {changed, b.state, wait, b.last, suspect or 0}
end
if probe then
  -- only the ticket that owns the probe token decides; a lapsed probe's late answer does not
  if b.state ~= 'half_open' or b.probe ~= ticket then return reply(0) end
  if tally == 'n' or tally == 'a' then
    b.probe = ''
    b.probe_since = -1
  elseif tally == 'f' then
    b.last = code
    brk_open(b, now)
  else
    b.state = 'closed'
    b.opens = 0
    b.probe = ''
    b.probe_since = -1
    b.epoch = b.epoch + 1
    brk_clear(key)
    redis.call('ZREMRANGEBYSCORE', pending, '-inf', '+inf')  -- no DEL: ACL_COMMANDS
  end
  brk_save(key, b, cfg)
  return reply(1)
end
if epoch ~= b.epoch then return reply(0) end
local held = redis.call('ZREM', pending, ticket)
if b.state ~= 'closed' or tally == 'n' or tally == 'a' then return reply(0) end
local failure = tally == 'f'
if failure then b.last = code end
brk_add(key, cfg, now, failure, 1)
if failure then
  local total, failures = brk_counts(key, cfg, now)
  if total >= cfg.min and failures >= cfg.ratio * total - 1e-9 then
    brk_open(b, now)
    redis.call('ZREMRANGEBYSCORE', pending, '-inf', '+inf')  -- no DEL: ACL_COMMANDS
    brk_save(key, b, cfg)
    return reply(1)
  end
  redis.call('HSET', key, 'last', b.last)
  redis.call('PEXPIRE', key, cfg.ttl)
  if failures == total then return reply(0, 1) end
  return reply(0)
end
redis.call('PEXPIRE', key, cfg.ttl)
return reply(0)
