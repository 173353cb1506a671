-- Delete an emptied session, unless a login or rotation in another request of the same
-- browser has just moved it to a new id: the "moved" marker under the old id must stay
-- (requests still carrying the old cookie are told by it not to send a cookie that would
-- replace the new one), and so must the browser's new cookie.
--
-- KEYS[1]  the session key
-- KEYS[2]  the user's index (sorted set of session ids), when ARGV[2] ~= ''
--
-- ARGV[1]  how the "moved" marker begins
-- ARGV[2]  the session id (the index member), or '' (no user, no index)
--
-- Returns 1 when a live session was deleted, 0 when there was none, -1 when it had
-- been moved (nothing deleted).

local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
    return 0
end
if kind == 'string' then
    local current = redis.call('GET', KEYS[1])
    if string.sub(current, 1, #ARGV[1]) == ARGV[1] then
        return -1
    end
end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then
    redis.call('ZREM', KEYS[2], ARGV[2])
end
return 1
