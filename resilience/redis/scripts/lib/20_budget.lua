-- The Finagle retry budget (RetryBudget, resilience/_budget.py), one slot per second over
-- `ttl` seconds: min_per_second * ttl + ratio * deposits - withdrawals must stay >= 1.
local function budget(key, now, deposits, withdraw, ratio, min_per_second, ttl, state_ttl)
  local slots = math.max(1, math.ceil(ttl))
  local sec = math.floor(now / 1000)
  local names = {'sec'}
  for i = 0, slots - 1 do names[#names + 1] = 'd' .. i; names[#names + 1] = 'w' .. i end
  local v = redis.call('HMGET', key, unpack(names))
  local last = tonumber(v[1])
  local d, w = {}, {}
  for i = 0, slots - 1 do
    d[i] = tonumber(v[2 + 2 * i]) or 0
    w[i] = tonumber(v[3 + 2 * i]) or 0
  end
  if last == nil or sec - last >= slots then
    for i = 0, slots - 1 do d[i] = 0; w[i] = 0 end
  elseif sec > last then
    for s = last + 1, sec do d[s % slots] = 0; w[s % slots] = 0 end
  end
  if last == nil or sec > last then last = sec end
  local idx = last % slots
  d[idx] = d[idx] + deposits
  local ok = 1
  if withdraw then
    local sd, sw = 0, 0
    for i = 0, slots - 1 do sd = sd + d[i]; sw = sw + w[i] end
    if min_per_second * ttl + ratio * sd - sw >= 1 then w[idx] = w[idx] + 1 else ok = 0 end
  end
  local out = {'sec', last}
  for i = 0, slots - 1 do
    out[#out + 1] = 'd' .. i; out[#out + 1] = d[i]
    out[#out + 1] = 'w' .. i; out[#out + 1] = w[i]
  end
  redis.call('HSET', key, unpack(out))
  redis.call('PEXPIRE', key, state_ttl)
  return ok
end
