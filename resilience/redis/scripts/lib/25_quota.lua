-- QuotaCount (resilience/_pacing.py): the announced quota of origin O, counted down by the
-- fleet's sends between answers, in the origin's hash: qleft (sends left; absent: nothing to
-- count), qreset (ms), qlimit, qwin (ms), qseq (the newest send an answer told of), qrolled
-- (answers to sends up to this one belong to an older window), qfresh (1: no answer yet in
-- this window), sends (the fleet's send counter while counting). Times in ms.
local QUOTA_FIELDS = {'qleft', 'qreset', 'qlimit', 'qwin', 'qseq', 'qrolled', 'qfresh', 'sends'}

local function quota_load(key)
  local q = hash_load(key, QUOTA_FIELDS)
  q.qseq = q.qseq or 0
  q.qrolled = q.qrolled or -1
  q.qfresh = q.qfresh or 1
  q.sends = q.sends or 0
  return q
end

local function quota_save(key, q)
  hash_save(key, QUOTA_FIELDS, q)
end

-- QuotaCount.roll: the window reset, its whole quota is there again; the next reset is
-- predicted only for windows up to MAX_PREDICTED_WINDOW (a longer one: nothing to count until
-- an answer says)
local function quota_roll(q, now)
  if q.qreset == nil or now < q.qreset then return end
  q.qrolled, q.qfresh = q.sends, 1
  if q.qwin and q.qwin > 0 and q.qwin <= MAX_PREDICTED_WINDOW_MS then
    q.qleft = q.qlimit
    q.qreset = q.qreset + q.qwin * (1 + math.floor((now - q.qreset) / q.qwin))
  else
    q.qleft, q.qreset = nil, nil
  end
end

-- QuotaCount.answer: an answer to send `seq` announced `remaining` (-1: none) until `reset`
-- ms from now (-1: none), of `limit` (-1) per `win` ms (-1)
local function quota_answer(q, seq, remaining, reset, limit, win, now)
  if win >= 0 and limit >= 0 then q.qwin = win end
  if limit >= 0 then q.qlimit = limit end
  if remaining < 0 or seq <= q.qrolled or seq < q.qseq then return end
  q.qseq = seq
  local left = math.max(0, remaining - (q.sends - seq))
  if q.qfresh == 1 or q.qleft == nil then q.qleft = left else q.qleft = math.min(q.qleft, left) end
  if reset >= 0 then
    local at = now + reset
    if q.qfresh == 1 or q.qreset == nil then
      if q.qreset ~= nil and q.qreset > now then q.qreset = math.min(q.qreset, at) else q.qreset = at end
    else
      q.qreset = math.min(q.qreset, at)
    end
  end
  q.qfresh = 0
end

-- QuotaCount.spent -> ms until the reset (0: not spent)
local function quota_wait(q, now)
  if q.qleft ~= nil and q.qleft <= 0 and q.qreset ~= nil then return math.max(0, q.qreset - now) end
  return 0
end

-- An answer's quota as the release carries it: "answer|seq|remaining|reset_ms|limit|win_ms"
-- (-1: not announced). A plain number is an answer without one.
local function quota_parse(raw)
  local answer, seq, rem, reset, limit, win =
    string.match(raw, '^(%d+)|(%-?%d+)|(%-?%d+)|(%-?[%d.]+)|(%-?%d+)|(%-?[%d.]+)$')
  if answer == nil then return tonumber(raw), nil end
  return tonumber(answer), {tonumber(seq), tonumber(rem), tonumber(reset), tonumber(limit),
                            tonumber(win)}
end
