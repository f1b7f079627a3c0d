-- bench/lua/suspended.lua: hold INVITE transactions waiting in the route, for
-- bench/suspended_bench.py.
--
-- An INVITE to sip:hold-MS@... gets its transaction (tm sends 100 Trying), then the route
-- waits in KSR.tmx.t_wait_event("bench-hold", MS): the transaction and the route's Lua
-- state stay in memory while nothing happens. It ends when the wait times out (MS) or
-- when an OPTIONS to sip:release@... calls KSR.tmx.t_notify_event("bench-hold") for every
-- waiter at once; either way the route answers 486, and tm absorbs the ACK.

function ksr_request_route()
    if KSR.is_ACK() then
        KSR.tm.t_check_trans()
        return 1
    end
    if KSR.is_OPTIONS() then
        if KSR.pv.getw("$rU") == "release" then
            local n = KSR.tmx.t_notify_event("bench-hold", 1)
            KSR.sl.sl_send_reply(200, "Released " .. n)
        else
            KSR.sl.sl_send_reply(200, "Keepalive")
        end
        return 1
    end
    if not KSR.is_INVITE() then
        KSR.sl.sl_send_reply(405, "Method Not Allowed")
        return 1
    end
    if KSR.tm.t_newtran() < 0 then
        KSR.sl.sl_reply_error()
        return 1
    end
    local ms = tonumber(string.match(KSR.pv.getw("$rU"), "^hold%-(%d+)$")) or 30000
    KSR.tmx.t_wait_event("bench-hold", ms)
    KSR.tm.t_reply(486, "Busy Here")
    return 1
end
