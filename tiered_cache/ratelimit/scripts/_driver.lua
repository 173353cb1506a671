-- The part of every rate-limit check that the strategies share.
--
-- The loader (tiered_cache/ratelimit/lua.py) sends this file, then one strategy file
-- (which defines the locals `inspect` and `commit`), then `return check(inspect, commit)`,
-- as one script. Every strategy takes the same KEYS and ARGV and returns the same reply:
--
-- KEYS[i]     the key of limit i. All keys of one call share a hash tag (one slot).
-- ARGV[1]     cost: the units this request takes from every limit (>= 1)
-- ARGV[2]     "1": spend the cost when every limit admits it; "0": only look (status)
-- ARGV[3]     a token unique to this call (names the entries a log adds)
-- ARGV[2+2i]  the amount of limit i (units per period)
-- ARGV[3+2i]  the period of limit i, in microseconds (whole seconds)
--
-- Reply, a flat array of integers:
--   {admitted (1 or 0), retry_after_us, now_us,
--    remaining_1, reset_after_us_1, wait_us_1, remaining_2, ...}
-- remaining_i: units limit i has left after this call; reset_after_us_i: microseconds
-- until limit i has one more unit than that (0 when it is full); wait_us_i: microseconds
-- until limit i alone could take the cost (0: it could now); retry_after_us: 0 when
-- admitted, else the longest wait_us_i.
--
-- All or nothing: when any limit refuses, nothing is spent on any of them. The time is
-- the server's (TIME), so hosts whose clocks disagree still agree on every decision.
--
-- inspect(key, amount, period, cost, now) returns a state table with at least
--   wait      microseconds until this limit could take `cost` (0: it can now)
--   remaining units left now;  reset  microseconds until there is one more unit
-- commit(key, state, cost, now, token) spends `cost` and updates remaining and reset.

local function as_integer(x)
  -- Lua 5.1 prints large numbers as 1.7e+15: scores and bounds need every digit.
  return string.format("%.0f", x)
end

local function check(inspect, commit)
  local time = redis.call("TIME")
  local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
  local cost = tonumber(ARGV[1])
  local states = {}
  local retry = 0
  for i = 1, #KEYS do
    local amount = tonumber(ARGV[2 + 2 * i])
    local period = tonumber(ARGV[3 + 2 * i])
    local state = inspect(KEYS[i], amount, period, cost, now)
    states[i] = state
    if state.wait > retry then
      retry = state.wait
    end
  end
  local admitted = 0
  if retry == 0 then
    admitted = 1
  end
  local reply = {admitted, retry, now}
  for i = 1, #KEYS do
    local state = states[i]
    if admitted == 1 and ARGV[2] == "1" then
      commit(KEYS[i], state, cost, now, ARGV[3])
    end
    reply[#reply + 1] = state.remaining
    reply[#reply + 1] = state.reset
    reply[#reply + 1] = state.wait
  end
  return reply
end
