-- Deposit requests and withdraw one retry. KEYS: budget
-- ARGV: deposits ratio min_per_second ttl state_ttl_ms -> 1 allowed, 0 spent
return budget(KEYS[1], now_ms(), tonumber(ARGV[1]), true, tonumber(ARGV[2]),
              tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
