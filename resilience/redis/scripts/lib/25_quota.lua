-- QuotaCount (resilience/_pacing.py): the announced quota of origin O, counted down by the
-- fleet's sends between answers, in the origin's hash: qleft (sends left; absent: nothing to
-- count), qreset (ms), qlimit, qwin (ms), qseq (the newest send an answer told of), qrolled
-- (answers to sends up to this one belong to an older window), qfresh (1: no answer yet in
-- this window), sends (the fleet's send counter while counting); the wall-clock alignment
-- (resilience/_aligned.py): qal (ms, where it places this window's end), qunal (1: contradicted
-- at this origin, for good), qprobe (1: rolled, its probe not answered), qearly (1: the roll
-- was at the aligned end), qcoarse (1: a reset in this window was whole delta seconds), qlast
-- (when the latest send was taken), qended (sends taken before the aligned end of a count
-- not spent). Times in ms.
local QUOTA_FIELDS = {'qleft', 'qreset', 'qlimit', 'qwin', 'qseq', 'qrolled', 'qfresh', 'sends',
                      'qal', 'qunal', 'qprobe', 'qearly', 'qcoarse', 'qlast', 'qended'}

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

-- QuotaCount.spent: no send left before a known reset
local function quota_spent(q)
  return q.qleft ~= nil and q.qleft <= 0 and q.qreset ~= nil
end

-- QuotaCount.roll: the window reset, its whole quota is there again; the next reset is
-- predicted only for windows up to MAX_PREDICTED_WINDOW (a longer one, or one not announced:
-- counted from the limit, but no hold until an answer names the reset). At the aligned end
-- of a spent count only the probe is let go.
local function quota_roll(q, now)
  if q.qreset == nil then return end
  if now < q.qreset then
    if q.qal == nil or now < q.qal + ALIGN_SKEW_MS or q.qunal then return end
    if not quota_spent(q) then
      -- not used up by its aligned end: sends from here on are the next window's
      if q.qended == nil then q.qended = q.sends end
      return
    end
    q.qrolled, q.qfresh, q.qprobe, q.qearly = q.sends, 1, 1, 1
    q.qleft, q.qal, q.qcoarse, q.qended = 1, nil, nil, nil
    return
  end
  -- a whole-second reset names the end only to within a second: sends taken in that second
  -- may count in the server's new window already; then one probe first
  local unsure = q.qcoarse and (q.qlast or -math.huge) > q.qreset - 1000
  q.qrolled, q.qfresh, q.qal, q.qcoarse, q.qearly, q.qended = q.sends, 1, nil, nil, nil, nil
  if unsure then q.qprobe, q.qleft = 1, 1 else q.qprobe, q.qleft = nil, q.qlimit end
  if q.qwin and q.qwin > 0 and q.qwin <= MAX_PREDICTED_WINDOW_MS then
    q.qreset = q.qreset + q.qwin * (1 + math.floor((now - q.qreset) / q.qwin))
  else
    q.qreset = nil
  end
end

-- QuotaCount._probed: the first answer after the roll at the aligned end; a success shows the
-- quota refilled, a 429 that the window had not ended (the alignment is dropped for good)
local function quota_probed(q, refilled)
  q.qprobe = nil
  if refilled then
    if q.qearly then q.qreset = nil end
    return
  end
  if q.qearly then q.qunal, q.qal = 1, nil end
  q.qfresh, q.qleft = 0, 0
end

-- QuotaCount.answer: an answer to send `seq` (limited: 1 for a 429) announced `remaining`
-- (-1: none) until `reset` ms from now (-1: none), of `limit` (-1) per `win` ms (-1); the
-- aligned end `aligned` ms from now (-1: none), `unaligned` 1 when it contradicts alignment
local function quota_answer(q, seq, remaining, reset, limit, win, now, aligned, unaligned, limited)
  if win >= 0 and limit >= 0 then q.qwin = win end
  if limit >= 0 then q.qlimit = limit end
  if unaligned == 1 then q.qunal = 1 end
  if seq <= q.qrolled or seq < q.qseq then return end
  if q.qended ~= nil and seq > q.qended and not q.qunal then
    -- sent after the aligned end of a window not used up: the answer is the next window's
    q.qrolled, q.qfresh, q.qreset, q.qal, q.qended = q.qended, 1, nil, nil, nil
  end
  if q.qprobe and (limited == 1 or remaining >= 0) then quota_probed(q, limited ~= 1) end
  if remaining < 0 then return end
  q.qseq = seq
  local left = math.max(0, remaining - (q.sends - seq))
  if q.qfresh == 1 or q.qleft == nil then q.qleft = left else q.qleft = math.min(q.qleft, left) end
  if reset >= 0 then
    local at = now + reset
    if aligned >= 0 or unaligned == 1 then
      q.qcoarse = 1
    elseif q.qfresh == 1 then
      q.qcoarse = nil
    end
    if q.qfresh == 1 or q.qreset == nil then
      if q.qreset ~= nil and q.qreset > now then q.qreset = math.min(q.qreset, at) else q.qreset = at end
    else
      q.qreset = math.min(q.qreset, at)
    end
    if aligned >= 0 and not q.qunal then
      local end_at = now + aligned
      if q.qfresh == 1 or q.qal == nil then q.qal = end_at else q.qal = math.min(q.qal, end_at) end
    end
  end
  q.qfresh = 0
end

-- QuotaCount.take: one send taken at `now`
local function quota_take(q, now)
  q.qleft = q.qleft - 1
  q.qlast = now
end

-- QuotaCount.throttled: a 429 while counting, the quota is spent sooner than counted (the
-- fleet's 429 carries no send number: one while the probe is out is the probe's)
local function quota_throttled(q)
  if q.qprobe then quota_probed(q, false) end
  q.qleft = 0
end

-- QuotaCount.wait -> ms a spent quota holds the origin: until the aligned end or the reset;
-- while the probe is out, a short look again (at most until the reset)
local function quota_wait(q, now)
  if not quota_spent(q) then return 0 end
  local untl = q.qreset - now
  if q.qprobe then return math.max(0, math.min(untl, PROBE_POLL_MS)) end
  if q.qal ~= nil and not q.qunal then untl = math.min(untl, q.qal + ALIGN_SKEW_MS - now) end
  return math.max(0, untl)
end

-- An answer's quota as the release carries it:
-- "answer|seq|remaining|reset_ms|limit|win_ms|aligned_ms|unaligned" (-1: not announced;
-- unaligned 0 or 1). A plain number is an answer without one.
local function quota_parse(raw)
  local answer, seq, rem, reset, limit, win, aligned, unaligned = string.match(raw,
    '^(%d+)|(%-?%d+)|(%-?%d+)|(%-?[%d.]+)|(%-?%d+)|(%-?[%d.]+)|(%-?[%d.]+)|([01])$')
  if answer == nil then return tonumber(raw), nil end
  return tonumber(answer), {tonumber(seq), tonumber(rem), tonumber(reset), tonumber(limit),
                            tonumber(win), tonumber(aligned), tonumber(unaligned)}
end
