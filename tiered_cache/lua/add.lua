-- `add`: store a value only if the key holds none, and only then overtake a load of the
-- key in flight (as lua/overtake.lua does): a refused add changed nothing, and a load
-- in flight (a stale value's refresh, say) may still store.
--
-- KEYS[1]  the data key
-- KEYS[2]  its single-flight lock
-- ARGV[1]  the framed value
-- ARGV[2]  its time to live in milliseconds, or '' for none
--
-- Returns 1 when stored, 0 when the key held a value.

local stored
if ARGV[2] == '' then
    stored = redis.call('SET', KEYS[1], ARGV[1], 'NX')
else
    stored = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
end
if not stored then
    return 0
end
local held = redis.pcall('GET', KEYS[2])
if type(held) == 'string' and string.sub(held, 1, 1) ~= '!' then
    redis.call('SET', KEYS[2], '!' .. held, 'KEEPTTL')
end
return 1
