-- A write of a key overtakes a load of it in flight: mark the key's single-flight lock,
-- when a loader holds it, '!' .. its token (its expiry kept), so that the loader stores
-- nothing (lua/store_if_held.lua) and its release clears the mark (lua/release.lua).
-- Keyed by the token: a loader whose lock expired cannot clear the next holder's mark.
--
-- KEYS[1]  the lock
--
-- Returns 1 when a load was overtaken. A lock key holding another type (foreign data
-- under our prefix) is left alone: the write it rides with must not fail for it.

local held = redis.pcall('GET', KEYS[1])
if type(held) ~= 'string' or string.sub(held, 1, 1) == '!' then
    return 0
end
redis.call('SET', KEYS[1], '!' .. held, 'KEEPTTL')
return 1
