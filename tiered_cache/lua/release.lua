-- Release a single-flight lock: delete it if it holds our token, or our token marked by
-- a write that overtook us (lua/overtake.lua); anything else is another holder's (or
-- foreign data under our prefix, of another type: left alone).
--
-- KEYS[1]  the lock
-- ARGV[1]  our token
--
-- Returns 1 when released.

local held = redis.pcall('GET', KEYS[1])
if held == ARGV[1] or held == '!' .. ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
