-- sliding-window-log: exact. One sorted set per limit holds an entry per unit spent,
-- scored by the server time (microseconds) it was spent at; a unit leaves the window
-- `period` after it was spent. Memory: up to `amount` entries per client and limit.
--
-- KEYS[i]     the sorted set of limit i (all keys in one hash slot)
-- ARGV[1]     cost;  ARGV[2] "1" to spend, "0" to look;  ARGV[3] a token unique to the call
-- ARGV[2+2i]  amount of limit i;  ARGV[3+2i]  its period in microseconds
-- Reply: {admitted, retry_after_us, now_us, then remaining, reset_after_us, wait_us per limit}

local function score_at(key, low, index)
  -- The score of the index-th (0-based) entry still in the window.
  local found = redis.call("ZRANGEBYSCORE", key, "(" .. as_integer(low), "+inf",
    "WITHSCORES", "LIMIT", index, 1)
  return tonumber(found[2])
end

local function inspect(key, amount, period, cost, now)
  local low = now - period -- entries scored at or before this have left the window
  local count = redis.call("ZCOUNT", key, "(" .. as_integer(low), "+inf")
  local state = {period = period, low = low, count = count,
    remaining = math.max(0, amount - count), reset = 0, wait = 0}
  if count > 0 then
    state.reset = score_at(key, low, 0) + period - now
  end
  local excess = count + cost - amount
  if cost > amount then
    state.wait = period -- can never fit; ask to come back after a period
  elseif excess > 0 then
    -- the excess-th oldest entry must leave before the cost fits
    state.wait = score_at(key, low, excess - 1) + period - now
  end
  return state
end

local function commit(key, state, cost, now, token)
  redis.call("ZREMRANGEBYSCORE", key, "-inf", as_integer(state.low))
  local score = as_integer(now)
  local members = {}
  for j = 1, cost do
    members[#members + 1] = score
    members[#members + 1] = token .. ":" .. j
    if #members >= 1000 or j == cost then -- bounded: unpack() has a stack limit
      redis.call("ZADD", key, unpack(members))
      members = {}
    end
  end
  redis.call("PEXPIRE", key, math.ceil(state.period / 1000))
  state.remaining = state.remaining - cost
  if state.count == 0 then
    state.reset = state.period -- the oldest entry is the one just added
  end
end
