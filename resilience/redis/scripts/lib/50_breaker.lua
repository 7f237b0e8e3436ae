-- The circuit breaker's rule (resilience/_breaker.py's Breaker), on Redis's clock, for one
-- origin. KEYS: brk (HASH: state, opened, opens, probe, probe_since, epoch, last, and the
-- window's buckets s<i> t<i> f<i>) and pending (ZSET: ticket -> expiry ms, the attempts of
-- this closed period in flight). Settings come in ARGV (they are the store's, not constants):
-- ratio min_throughput sampling_ms break_ms growth max_break_ms probe_timeout_ms state_ttl_ms

local function brk_settings(first)
  return {ratio = tonumber(ARGV[first]), min = tonumber(ARGV[first + 1]),
          sampling = tonumber(ARGV[first + 2]), brk = tonumber(ARGV[first + 3]),
          growth = tonumber(ARGV[first + 4]), max_brk = tonumber(ARGV[first + 5]),
          probe_timeout = tonumber(ARGV[first + 6]), ttl = tonumber(ARGV[first + 7])}
end

local function brk_load(key)
  local v = redis.call('HMGET', key, 'state', 'opened', 'opens', 'probe', 'probe_since',
                       'epoch', 'last')
  return {state = v[1] or 'closed', opened = tonumber(v[2]) or 0, opens = tonumber(v[3]) or 0,
          probe = v[4] or '', probe_since = tonumber(v[5]) or -1, epoch = tonumber(v[6]) or 0,
          last = v[7] or ''}
end

local function brk_save(key, b, cfg)
  redis.call('HSET', key, 'state', b.state, 'opened', b.opened, 'opens', b.opens,
             'probe', b.probe, 'probe_since', b.probe_since, 'epoch', b.epoch, 'last', b.last)
  redis.call('PEXPIRE', key, cfg.ttl)
end

-- CircuitBreaker.break_for
local function brk_break(cfg, opens)
  local exponent = math.min(math.max(opens - 1, 0), 64)
  return math.min(cfg.brk * cfg.growth ^ exponent, cfg.max_brk)
end

-- Window.counts: (attempts, failures) over the sampling window ending now
local function brk_counts(key, cfg, now)
  local width = cfg.sampling / BREAKER_BUCKETS
  local oldest = math.floor(now / width) - BREAKER_BUCKETS + 1
  local total, failures = 0, 0
  for i = 0, BREAKER_BUCKETS - 1 do
    local v = redis.call('HMGET', key, 's' .. i, 't' .. i, 'f' .. i)
    local stamp = tonumber(v[1])
    if stamp and stamp >= oldest then
      total = total + (tonumber(v[2]) or 0)
      failures = failures + (tonumber(v[3]) or 0)
    end
  end
  return total, failures
end

-- Window.add, n times
local function brk_add(key, cfg, now, failure, n)
  local width = cfg.sampling / BREAKER_BUCKETS
  local index = math.floor(now / width)
  local slot = index % BREAKER_BUCKETS
  if tonumber(redis.call('HGET', key, 's' .. slot)) ~= index then
    redis.call('HSET', key, 's' .. slot, index, 't' .. slot, 0, 'f' .. slot, 0)
  end
  redis.call('HINCRBY', key, 't' .. slot, n)
  if failure then redis.call('HINCRBY', key, 'f' .. slot, n) end
end

local function brk_clear(key)
  for i = 0, BREAKER_BUCKETS - 1 do redis.call('HDEL', key, 's' .. i, 't' .. i, 'f' .. i) end
end

local function brk_pending(pending, now)
  redis.call('ZREMRANGEBYSCORE', pending, '-inf', now)
  return redis.call('ZCARD', pending)
end

local function brk_open(b, now)
  b.state = 'open'
  b.opens = b.opens + 1
  b.opened = now
  b.probe = ''
  b.probe_since = -1
end
