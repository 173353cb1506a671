-- fixed-window: a counter per limit that lives one period from the client's first unit
-- (windows start per client, so clients do not all come back at the same instant).
--
-- KEYS[i]     the counter of limit i (all keys in one hash slot)
-- ARGV[1]     cost;  ARGV[2] "1" to spend, "0" to look;  ARGV[3] unused here
-- ARGV[2+2i]  amount of limit i;  ARGV[3+2i]  its period in microseconds
-- Reply: {admitted, retry_after_us, now_us, then remaining, reset_after_us, wait_us per limit}

local function inspect(key, amount, period, cost, now)
  local count = tonumber(redis.call("GET", key)) or 0
  local ttl = redis.call("PTTL", key)
  local left = period
  if count > 0 and ttl > 0 then
    left = ttl * 1000
  else
    count = 0 -- no counter, or one without an expiry that is not ours to trust
  end
  local state = {period = period, fresh = count == 0, left = left,
    remaining = math.max(0, amount - count), reset = 0, wait = 0}
  if count > 0 then
    state.reset = left
  end
  if cost > amount then
    state.wait = period
  elseif count + cost > amount then
    state.wait = left
  end
  return state
end

local function commit(key, state, cost, now, token)
  if state.fresh then
    redis.call("SET", key, cost, "PX", math.ceil(state.period / 1000))
  else
    redis.call("INCRBY", key, cost)
  end
  state.remaining = state.remaining - cost
  state.reset = state.left
end
