-- A single-flight loader's write: store the value it loaded only if no write of the key
-- overtook the load (lua/overtake.lua marked the lock '!' .. token: the loader read its
-- source before that write, and its value, stored after it, would stand for the key's
-- whole timeout).
--
-- KEYS[1]  the data key
-- KEYS[2]  its single-flight lock
-- ARGV[1]  the loader's lock token
-- ARGV[2]  the framed value
-- ARGV[3]  its time to live in milliseconds, or '' for none
--
-- Returns 1 when stored (the lock released), 0 when not: overtaken (the mark is ours,
-- cleared so that the next miss may lock), or the lock expired and another loader holds
-- it (its lock, marked or not, is left to it). A lock found expired and not taken again
-- stores: a loader slower than its lock timeout is no worse off than before locks were
-- marked.

local held = redis.call('GET', KEYS[2])
if held == '!' .. ARGV[1] then
    redis.call('DEL', KEYS[2])
    return 0
end
if held and held ~= ARGV[1] then
    return 0
end
if held then
    redis.call('DEL', KEYS[2])
end
if ARGV[3] == '' then
    redis.call('SET', KEYS[1], ARGV[2])
else
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
