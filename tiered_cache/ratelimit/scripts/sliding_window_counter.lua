-- sliding-window-counter: approximate, O(1) memory. Time is cut into windows of one
-- period, counted from the client's first unit (o, in microseconds; a hash stored before
-- o existed counts from the epoch); a hash per limit holds o, the current window's
-- number (w), its count (c) and the previous window's count (p). The estimate of the
-- units spent over the last period is p * (time left in the current window) / period
-- + c. From a fresh start it is exact: the first `amount` units are admitted, no more,
-- for a whole period. (Windows aligned on the epoch split a client's first burst across
-- an edge, where the previous window weighs less: 100/10 seconds admitted 105 within a
-- second of a fresh start, and up to 150 within five.)
--
-- KEYS[i]     the hash of limit i (all keys in one hash slot)
-- ARGV[1]     cost;  ARGV[2] "1" to spend, "0" to look;  ARGV[3] unused here
-- ARGV[2+2i]  amount of limit i;  ARGV[3+2i]  its period in microseconds
-- Reply: {admitted, retry_after_us, now_us, then remaining, reset_after_us, wait_us per limit}

local function weighed(s)
  -- The previous window's units still counted, whole: ceil(p * (time left) / period).
  -- The estimate admits `cost` when c + cost + p * (time left) / period <= amount, that
  -- is when c + cost + weighed(s) <= amount: one count, in whole units, for the decision
  -- and for the figures. Exact while the product stays below 2^53 (a fresh window, p = 0,
  -- always); past it the ratio is taken first, within a unit. (Products of the amount
  -- and the period in microseconds, as this once compared, passed 2^53 for quotas from
  -- about 10,000,000 a day, and their figures came out a unit short.)
  local time_left = s.period - s.elapsed
  local product = s.prev * time_left
  if product >= 9007199254740992 then
    return math.ceil(s.prev * (time_left / s.period))
  end
  local units = math.floor(product / s.period)
  if units * s.period < product then
    units = units + 1
  elseif units > 0 and (units - 1) * s.period >= product then
    units = units - 1
  end
  return units
end

local function wait_for(s, cost)
  -- Microseconds until `cost` more units fit, from the estimate's formula.
  if cost > s.amount then
    return s.period
  end
  if s.curr + cost + s.weighed <= s.amount then
    return 0
  end
  if s.curr + cost <= s.amount then
    -- in this window, once the previous window's weight has fallen far enough
    local at = s.period - (s.amount - s.curr - cost) * s.period / s.prev
    return math.max(1, math.ceil(at - s.elapsed + s.ahead))
  end
  -- not before the next window, where this window's count becomes the previous one
  local at = s.period - (s.amount - cost) * s.period / s.curr
  return (s.period - s.elapsed + s.ahead) + math.max(0, math.ceil(at))
end

local function figure(s)
  s.weighed = weighed(s)
  s.remaining = math.min(s.amount, math.max(0, s.amount - s.curr - s.weighed))
  if s.remaining >= s.amount then
    s.reset = 0
  else
    s.reset = wait_for(s, s.remaining + 1)
  end
end

local function inspect(key, amount, period, cost, now)
  local stored = redis.call("HMGET", key, "w", "c", "p", "o")
  local w, c = tonumber(stored[1]), tonumber(stored[2]) or 0
  local origin = now
  if w ~= nil then
    origin = tonumber(stored[4]) or 0
  end
  local window = math.floor((now - origin) / period)
  if w ~= nil and w > window and w <= window + 1 then
    -- Redis's clock went back (a failover to a host running behind): stay in the stored
    -- window, at its start, rather than start afresh and hand every client a full quota.
    -- Not for a window further ahead than the next: no clock we follow was that far off,
    -- and believing it would hold the count (and its figures) for that long.
    window = w
  end
  -- ahead: microseconds until the window starts, when the clock went back; the estimate
  -- weighs the counts as at its start, and every wait counts from there.
  local s = {amount = amount, period = period, window = window, origin = origin,
    fresh = w == nil, elapsed = math.max(0, now - origin - window * period),
    ahead = math.max(0, origin + window * period - now),
    moved = w ~= window, prev = 0, curr = 0}
  if w == window then
    s.curr = c
    s.prev = tonumber(stored[3]) or 0
  elseif w == window - 1 then
    s.prev = c
  end
  figure(s)
  s.wait = wait_for(s, cost)
  return s
end

local function commit(key, s, cost, now, token)
  if s.fresh then
    redis.call("HSET", key, "w", as_integer(s.window), "c", cost, "p", 0,
      "o", as_integer(s.origin))
  elseif s.moved then
    redis.call("HSET", key, "w", as_integer(s.window), "c", cost, "p", s.prev)
  else
    redis.call("HINCRBY", key, "c", cost)
  end
  redis.call("PEXPIRE", key, math.ceil(2 * s.period / 1000))
  s.curr = s.curr + cost
  figure(s)
end
