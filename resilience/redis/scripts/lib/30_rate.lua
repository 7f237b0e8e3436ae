-- PacingRule.cut (resilience/_pacing.py): a 429 while `measured` responses/s went through at
-- pacing `rate` (nil: not pacing) -> the rate that was cut (CUBIC's w_max), the new rate
local function pace_cut(measured, rate)
  local current = measured
  if rate and rate < current then current = rate end
  current = math.max(current, MIN_RATE)
  return current, math.max(current * BETA, MIN_RATE)
end

-- PacingRule.grow: a success `since_cut` seconds after the cut from `wmax`
local function pace_grow(wmax, since_cut, measured, rate)
  local scale = math.max(wmax * (1 - BETA) / (RECOVERY ^ 3), 1e-9)
  local k = (wmax * (1 - BETA) / scale) ^ (1 / 3)
  local cubic = scale * (since_cut - k) ^ 3 + wmax
  return math.max(math.min(cubic, math.max(2 * measured, rate)), MIN_RATE)
end

-- One response into the origin's gate and CUBIC pacer (RatePacer.on_response). The rate a cut
-- starts from is what the server let through: the non-429 responses per second over the last
-- window (a sliding window of two buckets), or since the first request over at least
-- MIN_SPAN_MS, erring high on purpose as WindowRate does. Until the server has let anything
-- through, the 429s are counted instead: an estimate, not 0.
local function rate_response(key, now, limited, retry_after, epoch_sent, state_ttl)
  local v = redis.call('HMGET', key, 'blocked', 'epoch', 'rate', 'wmax', 'lastfail', 'wcur',
                       'wprev', 'wstart', 'started', 'tcur', 'tprev')
  local blocked = tonumber(v[1]) or 0
  local epoch = tonumber(v[2]) or 0
  local rate = tonumber(v[3])
  local wmax = tonumber(v[4]) or 0
  local lastfail = tonumber(v[5]) or now
  local cur = tonumber(v[6]) or 0
  local prev = tonumber(v[7]) or 0
  local wstart = tonumber(v[8]) or now
  local started = tonumber(v[9]) or now
  local tcur = tonumber(v[10]) or 0
  local tprev = tonumber(v[11]) or 0
  if now - wstart >= 2 * WINDOW_MS then
    prev, cur, tprev, tcur, wstart = 0, 0, 0, 0, now
  elseif now - wstart >= WINDOW_MS then
    prev, cur, tprev, tcur, wstart = cur, 0, tcur, 0, wstart + WINDOW_MS
  end
  if limited then tcur = tcur + 1 else cur = cur + 1 end
  local function per_second(p, c)
    if now - started < WINDOW_MS then
      return (p + c) / (math.max(now - started, MIN_SPAN_MS) / 1000)
    end
    return (p * (1 - (now - wstart) / WINDOW_MS) + c) * 1000 / WINDOW_MS
  end
  local through = per_second(prev, cur)
  if prev + cur == 0 then through = per_second(tprev, tcur) end
  local closed = 0
  local new_rate = nil
  if limited then
    redis.call('HSET', key, 'throttled', now)
    if retry_after >= 0 and now + retry_after > blocked then
      if blocked <= now then closed = 1 end
      blocked = now + retry_after
    end
    if epoch_sent == epoch then
      -- a cut, at most once per round trip: only sends paced since the last cut may cut
      epoch = epoch + 1
      wmax, new_rate = pace_cut(through, rate)
      lastfail = now
    end
  elseif rate then
    new_rate = pace_grow(wmax, (now - lastfail) / 1000, through, rate)
  end
  if new_rate then
    -- a new rate spaces the sends scheduled from now on; those already scheduled keep their
    -- time (no re-pricing of borrowed slots, which would open a hole in the schedule)
    if rate == nil then redis.call('HSET', key, 'tat', now + BURST_MS) end
    rate = math.max(new_rate, MIN_RATE)
    redis.call('HSET', key, 'rate', rate, 'wmax', wmax, 'lastfail', lastfail)
  end
  redis.call('HSET', key, 'blocked', blocked, 'epoch', epoch, 'wcur', cur, 'wprev', prev,
             'tcur', tcur, 'tprev', tprev, 'wstart', wstart, 'started', started)
  redis.call('PEXPIRE', key, state_ttl)
  local milli = -1
  if rate then milli = math.floor(rate * 1000) end
  return closed, milli
end
