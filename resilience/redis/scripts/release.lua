-- Return leases after feeding their answers in (see release_leases).
-- KEYS: ctl permits order wake rate
-- ARGV: initial ceiling lease_ttl_ms state_ttl_ms [lease answer]...
-- -> {old_limit, new_limit, removed, slow_start}
local ctl, permits, order, wake, rkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ceiling = tonumber(ARGV[2])
local lease_ttl = tonumber(ARGV[3])
local state_ttl = tonumber(ARGV[4])
local st = load_limit(ctl, tonumber(ARGV[1]), ceiling)
local old = st.limit
local removed = release_leases(st, permits, order, rkey, ceiling, ARGV, 5, now_ms(), state_ttl)
if st.dirty then save_limit(ctl, st, state_ttl) end
wake_push(wake, removed + math.max(0, st.limit - old), math.max(1, st.limit), 2 * lease_ttl)
return {old, st.limit, removed, st.slow}
