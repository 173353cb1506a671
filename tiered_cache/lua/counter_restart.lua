-- Bump a namespace's version counter that holds what is no counter (foreign bytes,
-- another type, a number past any version of ours), which INCR refuses (or takes) and
-- readers take for version 0: replace it with a fresh start, in one step. Two workers that both found the junk cannot move the counter
-- backwards: the second one's INCR runs on the first one's start, never a SET over it.
--
-- KEYS[1]  the counter
-- ARGV[1]  the fresh start: the time in microseconds (exact in Lua's doubles)
-- ARGV[2]  where junk begins (2^62): a number INCR takes but no counter of ours reaches
--
-- Returns the new version.

local bumped = redis.pcall('INCR', KEYS[1])
if type(bumped) == 'number' and bumped < tonumber(ARGV[2]) then
    return bumped
end
redis.call('SET', KEYS[1], ARGV[1])
return tonumber(ARGV[1])
