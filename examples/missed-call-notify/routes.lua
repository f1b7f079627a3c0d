-- examples/missed-call-notify/routes.lua: a stateful proxy that notifies a callee of
-- each call it missed, over HTTP, without ever making a call wait for it.
--
-- An INVITE that ends unanswered (the caller hung up: 487; nobody answered before
-- fr_inv_timer: 408) or with 404/480 runs the failure route, which queues a
-- notification (lua/notify.lua: KSR.mqueue.mq_add) and lets the reply go to the
-- caller at once. The timer route ksr_notify_timer ([modparams.rtimer], every second)
-- drains the queue: it looks up the callee's notify URL in SQLite (sqlops, table
-- notify_targets) and POSTs the notification (http_client), retrying with backoff
-- while the target is down. The queue is in SQLite too (mqueue dbmode=1): nothing
-- pending is lost across a restart.
--
-- Callees are reached by their Request-URI (no registrar here): the caller dials
-- sip:bob@HOST:PORT and the call is relayed there.

local notify = require "notify"

notify.setup {
    queue = "notify",           -- [modparams.mqueue]
    db = "notify",              -- [modparams.sqlops] sqlcon
    backoff_s = 1,              -- retry after 1, 2, 4 ... s
    max_backoff_s = 60,
    timeout_ms = 2000,
}

function ksr_request_route()
    if KSR.maxfwd.process_maxfwd(10) < 0 then
        KSR.sl.sl_send_reply(483, "Too Many Hops")
        return 1
    end
    if KSR.is_CANCEL() then
        if KSR.tm.t_check_trans() > 0 then
            KSR.tm.t_relay()
        end
        return 1
    end
    if KSR.siputils.has_totag() > 0 then
        if KSR.rr.loose_route() > 0 or (KSR.is_ACK() and KSR.tm.t_check_trans() > 0) then
            KSR.tm.t_relay()
            return 1
        end
        KSR.sl.sl_send_reply(404, "Not here")
        return 1
    end
    if KSR.is_INVITE() then
        KSR.rr.record_route()
        KSR.tm.t_on_failure("ksr_missed_call")
    end
    if KSR.tm.t_relay() < 0 then
        KSR.sl.sl_reply_error()
    end
    return 1
end

-- Every branch failed (or the caller cancelled): a missed call?
function ksr_missed_call()
    notify.failure()
    return 1
end

-- [modparams.rtimer]: every second, send what is due (this may wait on HTTP and SQL;
-- SIP processing goes on meanwhile).
function ksr_notify_timer(evname, timer)
    notify.drain()
    return 1
end
