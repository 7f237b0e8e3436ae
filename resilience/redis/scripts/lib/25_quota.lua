-- QuotaCount (resilience/_pacing.py): the announced quota of origin O, counted down by the
-- fleet's sends between answers, in the origin's hash: qleft (sends left; absent: nothing to
-- count), qreset (ms), qlimit, qwin (ms), qleast (the least remaining an answer in this
-- window named), qfly (counted sends whose answer is not in yet: leases not released),
-- qwait (spent, waiting for answers since), qrolled (answers to sends up to this one belong
-- to an older window), qfresh (1: no answer yet in this window), sends (the fleet's send
-- counter while counting); the wall-clock alignment (resilience/_aligned.py): qal (where it
-- places this window's end), qunal (1: contradicted at this origin, for good), qprobe (1:
-- rolled, its probe not answered), qearly (1: the roll was at the aligned end), qcoarse (1: a
-- reset in this window was whole delta seconds), qlast (when the latest send was taken),
-- qended (sends taken before the aligned end of a count not spent). Times in ms.
local QUOTA_FIELDS = {'qleft', 'qreset', 'qlimit', 'qwin', 'qleast', 'qfly', 'qwait', 'qrolled',
                      'qfresh', 'sends', 'qal', 'qunal', 'qprobe', 'qearly', 'qcoarse', 'qlast',
                      'qended'}

local function quota_load(key)
  local q = hash_load(key, QUOTA_FIELDS)
  q.qfly = q.qfly or 0
  q.qrolled = q.qrolled or -1
  q.qfresh = q.qfresh or 1
  q.sends = q.sends or 0
  return q
end

local function quota_save(key, q)
  hash_save(key, QUOTA_FIELDS, q)
end

-- QuotaCount.spent: no send left before a known reset, or before the answers in flight
local function quota_spent(q)
  return q.qleft ~= nil and q.qleft <= 0 and (q.qreset ~= nil or q.qfly > 0)
end

-- QuotaCount.holding: spent with no counted send in flight but the caller's `mine` (a gate
-- closed: held until the reset or the aligned end)
local function quota_holding(q, mine)
  return q.qreset ~= nil and quota_spent(q) and q.qfly <= mine
end

-- QuotaCount._roll_at: when the count rolls, the aligned end while the alignment holds (up to
-- two skews past the reset named), else the reset named
local function quota_roll_at(q)
  if q.qal ~= nil and not q.qunal and q.qreset ~= nil then return q.qal + ALIGN_SKEW_MS end
  return q.qreset
end

-- QuotaCount.roll: the window reset, its whole quota is there again; the next reset is
-- predicted only for windows up to MAX_PREDICTED_WINDOW (a longer one, or one not announced:
-- counted from the limit, but no hold until an answer names the reset). At the aligned end
-- of a spent count only the probe is let go.
local function quota_roll(q, now)
  if q.qreset == nil then return end
  if now < quota_roll_at(q) then return end
  if now < q.qreset then  -- the aligned end, before the reset named
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
  q.qfresh, q.qleft, q.qleast = 0, 0, 0
end

-- QuotaCount._spend_unread: a send of this window left flight, its count not read: the server
-- may have counted it (quota_answer has returned before for a send of an older window)
local function quota_spend_unread(q)
  if q.qfresh ~= 1 then q.qleast = math.max(0, (q.qleast or 0) - 1) end
end

-- QuotaCount.answer: an answer to send `seq` (limited: 1 for a 429) announced `remaining`
-- (-1: none) until `reset` ms from now (-1: none), of `limit` (-1) per `win` ms (-1); the
-- aligned end `aligned` ms from now (-1: none), `unaligned` 1 when it contradicts alignment;
-- `counted` 1 when the send is one of the count's in flight (its release), with `held` leases
-- held in the namespace (the sends in flight are never more: a crashed worker's expire, and
-- so do its sends)
local function quota_answer(q, seq, remaining, reset, limit, win, now, aligned, unaligned, limited,
                            counted, held)
  if counted == 1 then q.qfly = math.max(0, math.min(q.qfly - 1, held)) end
  if win >= 0 and limit >= 0 then q.qwin = win end
  if limit >= 0 then q.qlimit = limit end
  if unaligned == 1 then q.qunal = 1 end
  if seq <= q.qrolled then return end  -- the older window's: says nothing of this one
  if q.qended ~= nil and seq > q.qended and not q.qunal then
    -- sent after the aligned end of a window not used up: the answer is the next window's
    q.qrolled, q.qfresh, q.qreset, q.qal, q.qended = q.qended, 1, nil, nil, nil
  end
  if q.qprobe and (limited == 1 or remaining >= 0) then quota_probed(q, limited ~= 1) end
  if remaining < 0 then
    if counted == 1 then quota_spend_unread(q) end
    return
  end
  if q.qfresh ~= 1 then remaining = math.min(q.qleast, remaining) end
  q.qleast = remaining
  q.qleft = math.max(0, remaining - q.qfly)
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
  q.qfly = q.qfly + 1
end

-- QuotaCount.throttled: a 429 to send `seq` (0: sent before counting began, the latest) while
-- counting, the quota is spent sooner than counted; one to a send of this window holds it
-- for the window (later answers cannot give back what the 429 refused)
local function quota_throttled(q, seq)
  if seq <= 0 then seq = q.sends end
  if seq > q.qrolled then
    if q.qprobe then quota_probed(q, false) end
    q.qleast, q.qfresh = 0, 0
  end
  q.qleft = 0
end

-- QuotaCount.wait -> ms a spent quota holds the origin: until the aligned end or the reset;
-- while the probe or another counted send is out, a look again (at most until the roll)
local function quota_wait(q, now)
  if not quota_spent(q) then
    q.qwait = nil
    return 0
  end
  local roll_at = quota_roll_at(q)
  if q.qprobe or q.qfly > 0 then
    if q.qwait == nil then q.qwait = now end
    -- Alignment.poll: PROBE_POLL_MS at first, then a share of the wait so far, at most POLL_MAX_MS
    local poll = math.min(math.max(PROBE_POLL_MS, (now - q.qwait) * POLL_GROWTH), POLL_MAX_MS)
    if roll_at == nil then return poll end
    return math.max(0, math.min(roll_at - now, poll))
  end
  q.qwait = nil
  return math.max(0, roll_at - now)
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
