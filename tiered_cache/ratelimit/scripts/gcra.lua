-- gcra: the generic cell rate algorithm, smooth, one small hash per limit. A client
-- may spend a burst of `amount` units, then one unit per period/amount.
--
-- Kept exact in integers: the hash holds the client's debt (d) at a time (t, in ticks).
-- A unit adds `p` (the period in ticks) to the debt, each tick pays back `amount`, and
-- a unit fits while the debt stays at most p * amount; that is GCRA with emission
-- interval period/amount and a burst of `amount`, scaled by `amount` so that no
-- division is needed. A tick is 1 us, or coarser when p * amount would not fit in the
-- 53 bits of a Lua number.
--
-- KEYS[i]     the hash of limit i (all keys in one hash slot)
-- ARGV[1]     cost;  ARGV[2] "1" to spend, "0" to look;  ARGV[3] unused here
-- ARGV[2+2i]  amount of limit i;  ARGV[3+2i]  its period in microseconds
-- Reply: {admitted, retry_after_us, now_us, then remaining, reset_after_us, wait_us per limit}

local function wait_for(s, cost)
  if cost > s.amount then
    return s.period
  end
  local excess = s.debt + cost * s.p - s.p * s.amount
  if excess <= 0 then
    return 0
  end
  -- The debt is paid back at tick boundaries: the k-th one after the current tick began,
  -- part of which has passed (none with 1 us ticks; up to a coarse tick without this).
  return math.ceil(excess / s.amount) * s.tick - s.into
end

local function figure(s)
  s.remaining = math.floor((s.p * s.amount - s.debt) / s.p)
  if s.remaining >= s.amount then
    s.reset = 0
  else
    s.reset = wait_for(s, s.remaining + 1)
  end
end

local function inspect(key, amount, period, cost, now)
  local tick = 1
  while (period / tick) * amount > 2 ^ 52 do
    tick = tick * 10 -- periods are whole seconds, so any tick up to 1e6 divides them
  end
  local t = math.floor(now / tick)
  local stored = redis.call("HMGET", key, "d", "t")
  local debt = tonumber(stored[1]) or 0
  local last = tonumber(stored[2]) or t
  local s = {amount = amount, period = period, tick = tick, p = period / tick, t = t,
    into = now - t * tick, debt = math.max(0, debt - math.max(0, t - last) * amount)}
  figure(s)
  s.wait = wait_for(s, cost)
  return s
end

local function commit(key, s, cost, now, token)
  s.debt = s.debt + cost * s.p
  redis.call("HSET", key, "d", as_integer(s.debt), "t", as_integer(s.t))
  -- the debt is paid back in debt / amount ticks; the key is not needed after that
  redis.call("PEXPIRE", key, math.ceil(s.debt / s.amount * s.tick / 1000) + 1)
  figure(s)
end
