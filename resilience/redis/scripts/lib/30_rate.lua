-- PacingRule.cut (resilience/_pacing.py): a 429 while `measured` responses/s went through at
-- pacing `rate` (nil: not pacing) -> the rate that was cut (CUBIC's w_max), the new rate
local function pace_cut(measured, rate)
  local current = measured
  if rate and rate < current then current = rate end
  current = math.max(current, MIN_RATE)
  return current, math.max(current * BETA, MIN_RATE)
end

-- PacingRule.grow: a success `since_cut` seconds after the cut from `wmax` (to `beta` of it,
-- back there `recovery` s later; nil: the rule's own)
local function pace_grow(wmax, since_cut, measured, rate, beta, recovery)
  beta = beta or BETA
  recovery = recovery or RECOVERY
  local scale = math.max(wmax * (1 - beta) / (recovery ^ 3), 1e-9)
  local k = (wmax * (1 - beta) / scale) ^ (1 / 3)
  local cubic = scale * (since_cut - k) ^ 3 + wmax
  return math.max(math.min(cubic, math.max(2 * measured, rate)), MIN_RATE)
end

-- PacingRule.ramp_start: the slow start after the first costly gate of `gate` s, from `ok`
-- successes in the `span` s stretch before it
local function pace_ramp_start(ok, span, gate)
  local upper = ok / math.max(span, MIN_SPAN_MS / 1000)
  return math.max(MIN_RATE, math.min(ok / gate, BETA * upper))
end

-- PacingRule.ramp_rate: the slow start `since_open` s after the gate opened
local function pace_ramp_rate(start, since_open, gate)
  local steps = math.min(math.max(0, since_open) * RAMP_STEPS / gate, 20)
  return start * 2 ^ steps
end

-- PacingRule.ramp_limit: the server rate the slow start crossed, from where it drew its 429
local function pace_ramp_limit(end_rate, gate, burst)
  local period = gate / RAMP_STEPS
  local target = 0
  if end_rate > 0 then target = burst / (period * end_rate) end
  if target <= 0 or target >= 1 / math.log(2) then return end_rate end
  local lo, hi = 1.0, 2 ^ 40
  for _ = 1, 60 do
    local mid = math.sqrt(lo * hi)
    if ((mid - 1) / math.log(2) - math.log(mid) / math.log(2)) / mid < target then
      lo = mid
    else
      hi = mid
    end
  end
  return math.max(end_rate / lo, MIN_RATE)
end

-- PacingRule.held_fit: a 429 while held at `rate`: burst + r * span got through (nil: the
-- stretch is too short to tell, or the fit makes no sense)
local function pace_held_fit(ok, span, gate, burst, rate)
  if span < FIT_MIN_SPAN * gate then return nil end
  local fit = (ok - burst) / span
  if fit > 0 and fit <= rate then return fit end
  return nil
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

-- The pacer's fields besides the window's (RatePacer's state): the gate, the cut counter, the
-- rate, the cut it grows from (wmax, lastfail, cbeta, crec: beta and recovery of a costly cut),
-- the open stretch (openat, openok), the server's burst (burst, bsince, bspan) and the slow
-- start (rstart, rsince, rgate).
local PACER_FIELDS = {'blocked', 'epoch', 'rate', 'wmax', 'lastfail', 'cbeta', 'crec', 'openat',
                      'openok', 'burst', 'bsince', 'bspan', 'rstart', 'rsince', 'rgate'}

local function pacer_load(key)
  local v = redis.call('HMGET', key, unpack(PACER_FIELDS))
  local p = {}
  for i, name in ipairs(PACER_FIELDS) do p[name] = tonumber(v[i]) end
  p.blocked = p.blocked or 0
  p.epoch = p.epoch or 0
  p.wmax = p.wmax or 0
  p.openok = p.openok or 0
  return p
end

local function pacer_save(key, p)
  local set, del = {}, {}
  for _, name in ipairs(PACER_FIELDS) do
    if p[name] ~= nil then
      set[#set + 1] = name; set[#set + 1] = p[name]
    else
      del[#del + 1] = name
    end
  end
  if #set > 0 then redis.call('HSET', key, unpack(set)) end
  if #del > 0 then redis.call('HDEL', key, unpack(del)) end
end

-- RatePacer._close: the gate closes until `untl`; the next stretch starts when it opens
local function pacer_close(p, now, untl)
  if untl <= p.blocked then return 0 end
  local closed = 0
  if p.blocked <= now then closed = 1 end
  p.blocked = untl
  p.openat, p.openok = untl, 0
  return closed
end

-- RatePacer._hold: hold at `beta` of `estimate`, back at it `probe_gates` gate lengths later
local function pacer_hold(p, estimate, since, beta, gate)
  p.rstart, p.rsince, p.rgate = nil, nil, nil
  p.cbeta, p.crec = beta, PROBE_GATES * gate
  p.wmax = math.max(estimate, MIN_RATE)
  p.lastfail = since
  return math.max(p.wmax * beta, MIN_RATE)
end

-- RatePacer._costly_cut (times in ms here, seconds in the rule)
local function pacer_costly_cut(p, now, gate, span, ok)
  local reopen = math.max(now, p.blocked)
  if p.rstart and p.rate and p.burst then
    local est = pace_ramp_limit(p.rate, p.rgate, p.burst)
    local b = math.max(1, p.burst - est * p.bspan / 1000)
    return pacer_hold(p, pace_ramp_limit(p.rate, p.rgate, b), reopen, HOLD, gate)
  end
  if p.rate and p.cbeta then
    local fit = pace_held_fit(ok, span / 1000, gate, p.burst or 0, p.rate)
    if fit then return pacer_hold(p, fit, reopen, HOLD, gate) end
    return pacer_hold(p, p.rate, reopen, BETA, gate)
  end
  if p.burst == nil then
    p.burst, p.bsince, p.bspan = math.max(ok, 1), now - span, span
  end
  local start = pace_ramp_start(ok, span / 1000, gate)
  p.cbeta, p.crec = nil, nil
  p.rstart, p.rsince, p.rgate = start, reopen, gate
  return start
end

-- The pacing rate now: the slow start grows with time, not only with answers
local function pacer_rate(p, now)
  if p.rstart and p.rate then return pace_ramp_rate(p.rstart, (now - p.rsince) / 1000, p.rgate) end
  return p.rate
end

-- One response into the origin's gate and pacer (RatePacer.on_response).
local function rate_response(key, now, limited, retry_after, epoch_sent, state_ttl)
  local p = pacer_load(key)
  local rate = p.rate
  local w = window_load(key)
  window_record(w, now)
  if p.openat == nil then p.openat = now end
  if not limited then
    if now >= p.openat then
      p.openok = p.openok + 1
    elseif p.rstart and p.burst and not p.cbeta then
      -- sent in the first stretch, answered after its 429: still the server's burst
      p.burst = p.burst + 1
      p.bspan = now - p.bsince
    end
  end
  local closed = 0
  local new_rate = nil
  if limited then
    redis.call('HSET', key, 'throttled', now)
    if epoch_sent ~= p.epoch then
      -- this round trip was already cut; its gate may still be longer
      if retry_after >= 0 then closed = pacer_close(p, now, now + retry_after) end
    else
      -- a cut, at most once per round trip: only sends paced since the last cut may cut
      p.epoch = p.epoch + 1
      local span, ok = now - p.openat, p.openok
      if retry_after >= 0 then closed = pacer_close(p, now, now + retry_after) end
      if retry_after >= COSTLY_GATE_MS then
        new_rate = pacer_costly_cut(p, now, retry_after / 1000, span, ok)
      else
        p.rstart, p.rsince, p.rgate, p.cbeta, p.crec = nil, nil, nil, nil, nil
        p.wmax, new_rate = pace_cut(window_rate(w, now), rate)
        p.lastfail = now
      end
    end
  elseif rate then
    if p.rstart then
      new_rate = pacer_rate(p, now)
    else
      new_rate = pace_grow(p.wmax, (now - (p.lastfail or now)) / 1000, window_rate(w, now), rate,
                           p.cbeta, p.crec)
    end
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
