-- PacingRule.cut (resilience/_pacing.py): a 429 while `measured` responses/s went through at
-- pacing `rate` (nil: not pacing) -> the rate that was cut (CUBIC's w_max), the new rate
local function pace_cut(measured, rate)
  local current = measured
  if rate and rate < current then current = rate end
  current = math.max(current, MIN_RATE)
  return current, math.max(current * BETA, MIN_RATE)
end

-- PacingRule.grow: a success `since_cut` seconds after the cut from `wmax` (to `beta` of it,
-- back there after `recovery` s; nil: the rule's own)
local function pace_grow(wmax, since_cut, measured, rate, beta, recovery)
  beta = beta or BETA
  recovery = recovery or RECOVERY
  local scale = math.max(wmax * (1 - beta) / (recovery ^ 3), 1e-9)
  local k = (wmax * (1 - beta) / scale) ^ (1 / 3)
  local cubic = scale * (math.max(since_cut, 0) - k) ^ 3 + wmax
  return math.max(math.min(cubic, math.max(2 * measured, rate)), MIN_RATE)
end

-- WindowRate (resilience/_pacing.py): responses per second (429s included) over the last
-- window, counted in RATE_SLOTS slots; until a whole window has passed, over the time since the
-- first response (at least MIN_SPAN_MS), erring high on purpose. Kept in the origin's hash as
-- slot counts c0.. and their running total, so a response touches one slot, not all of them.
local SLOT_MS = WINDOW_MS / RATE_SLOTS

local function window_load(key)
  local v = redis.call('HMGET', key, 'first', 'slot', 'total')
  return {key = key, first = tonumber(v[1]), slot = tonumber(v[2]) or 0,
          total = tonumber(v[3]) or 0}
end

local function window_advance(w, now)
  local slot = math.floor(now / SLOT_MS)
  local gap = slot - w.slot
  if gap <= 0 then return end
  local names = {}
  for i = 1, math.min(gap, RATE_SLOTS) do names[#names + 1] = 'c' .. ((w.slot + i) % RATE_SLOTS) end
  if gap >= RATE_SLOTS then
    w.total = 0
  else
    local v = redis.call('HMGET', w.key, unpack(names))
    for i = 1, #names do w.total = w.total - (tonumber(v[i]) or 0) end
  end
  redis.call('HDEL', w.key, unpack(names))
  w.slot = slot
end

local function window_record(w, now)
  if w.first == nil then
    w.first = now
    w.slot = math.floor(now / SLOT_MS)
  end
  window_advance(w, now)
  redis.call('HINCRBY', w.key, 'c' .. (w.slot % RATE_SLOTS), 1)
  w.total = w.total + 1
end

local function window_rate(w, now)
  if w.first == nil then return 0 end
  window_advance(w, now)
  return w.total / (math.min(WINDOW_MS, math.max(now - w.first, MIN_SPAN_MS)) / 1000)
end

local function window_fields(w, out)
  out[#out + 1] = 'first'; out[#out + 1] = w.first
  out[#out + 1] = 'slot'; out[#out + 1] = w.slot
  out[#out + 1] = 'total'; out[#out + 1] = w.total
  return out
end

-- The pacer's fields besides the window's: the gate, the cut counter, the rate and the cut it
-- grows from (with a costly cut's beta and recovery in s: cbeta, crec; absent: the cheap
-- rule's), and the open stretch (openat ms, openok: since when the gate is open and how many
-- answers got through since).
local PACER_FIELDS = {'blocked', 'epoch', 'rate', 'wmax', 'lastfail', 'cbeta', 'crec', 'openat',
                      'openok'}

local function pacer_load(key)
  local p = hash_load(key, PACER_FIELDS)
  p.blocked = p.blocked or 0
  p.epoch = p.epoch or 0
  p.wmax = p.wmax or 0
  return p
end

local function pacer_save(key, p)
  hash_save(key, PACER_FIELDS, p)
end

-- RatePacer._close: the gate closes until `untl`; 1 when it was open
local function pacer_close(p, now, untl)
  if untl <= p.blocked then return 0 end
  local closed = 0
  if p.blocked <= now then closed = 1 end
  p.blocked = untl
  p.openat, p.openok = untl, 0  -- the next stretch starts when the gate opens
  return closed
end

-- PacingRule.stretch_cut, the fleet's rule for a costly gate: its first stretch is no burst
-- (its workers start over 0.1-1 s), so the server's burst cannot be told from it and nothing
-- is fitted. The rate is cut to BETA of what got through the open stretch (`ok` answers over
-- `span` s) and grows back to it along CUBIC over PROBE_GATES gate lengths (`gate` s) from
-- the gate's opening (`reopen` ms), probing above only after that.
local function pace_costly(p, ok, span, rate, gate, reopen)
  local wmax, new_rate = pace_cut(ok / math.max(span, MIN_SPAN_MS / 1000), rate)
  p.wmax, p.lastfail, p.cbeta, p.crec = wmax, reopen, BETA, PROBE_GATES * gate
  return new_rate
end

-- One response (to send `seq` of the quota count, 0: not counted) into the origin's gate and
-- pacer (RatePacer.on_response, cheap gates' rule).
local function rate_response(key, now, limited, retry_after, epoch_sent, state_ttl, seq)
  local p = pacer_load(key)
  local rate = p.rate
  local w = window_load(key)
  window_record(w, now)
  if p.openat == nil then p.openat, p.openok = now, 0 end
  if not limited and now >= p.openat then p.openok = (p.openok or 0) + 1 end
  local closed = 0
  local new_rate = nil
  local q = nil
  if limited then q = quota_load(key) end
  if limited and q.qleft ~= nil and q.qreset ~= nil then
    -- counting an announced quota, a 429 means it is spent sooner than counted (other
    -- clients, a race): hold until the reset and the 429's own gate; nothing to discover
    quota_throttled(q, seq)
    quota_save(key, q)
    if retry_after >= 0 then closed = pacer_close(p, now, now + retry_after) end
  elseif limited then
    redis.call('HSET', key, 'throttled', now)
    local span, ok = (now - p.openat) / 1000, p.openok or 0
    if retry_after >= 0 then closed = pacer_close(p, now, now + retry_after) end
    if epoch_sent == p.epoch then
      -- a cut, at most once per round trip: only sends paced since the last cut may cut
      p.epoch = p.epoch + 1
      if retry_after >= COSTLY_GATE_MS then
        new_rate = pace_costly(p, ok, span, rate, retry_after / 1000, math.max(now, p.blocked))
      else
        p.wmax, new_rate = pace_cut(window_rate(w, now), rate)
        p.lastfail, p.cbeta, p.crec = now, nil, nil
      end
    end
  elseif rate then
    new_rate = pace_grow(p.wmax, (now - (p.lastfail or now)) / 1000, window_rate(w, now), rate,
                         p.cbeta, p.crec)
  end
  if new_rate then
    -- a new rate spaces the sends scheduled from now on; those already scheduled keep their
    -- time (no re-pricing of borrowed slots, which would open a hole in the schedule)
    if rate == nil then redis.call('HSET', key, 'tat', now + BURST_MS) end
    p.rate = math.max(new_rate, MIN_RATE)
  end
  pacer_save(key, p)
  redis.call('HSET', key, unpack(window_fields(w, {})))
  redis.call('PEXPIRE', key, state_ttl)
  local milli = -1
  if p.rate then milli = math.floor(p.rate * 1000) end
  return closed, milli
end
