-- examples/push/routes.lua: a registrar and stateful proxy that wakes sleeping
-- callees with a push notification before it rings them (lua/push.lua).
--
--   trio-sip run --config examples/push/trio-sip.toml
--
--   * REGISTER for this server: save() stores the bindings (a mobile app puts RFC 8599's
--     pn-provider/pn-prid/pn-param in its Contact URI) and answers; push.registered()
--     then wakes the INVITEs waiting for this user;
--   * an initial INVITE for a user whose bindings carry pn-* parameters: push.invite()
--     POSTs a notification to the push gateway, waits for the device's REGISTER and
--     relays the INVITE to it (and to every device that registers within the fork
--     window); 480 if nobody registers in time or the gateway cannot be reached;
--   * other requests for our users: lookup() + t_relay(), 404 for unknown users.
--
-- The push options come from the environment (defaults in brackets):
--   PUSH_GATEWAY          [http://127.0.0.1:8088/push]  where the notifications go
--   PUSH_AUTHORIZATION    [none]   Authorization header value for the gateway
--   PUSH_WAIT_MS          [20000]  how long to wait for the callee's REGISTER
--   PUSH_FORK_WINDOW_MS   [5000]   how long other devices may join after the first
--   PUSH_HTTP_TIMEOUT_MS  [3000]   bound of one POST to the gateway
--   PUSH_HTABLE           [none]   an htable (declared in [modparams.htable]) holding
--                                  push records of callees that have no binding at all:
--                                  key the user, value "pn-provider=..;pn-prid=.."

local push = require "push"

local function env_ms(name, default)
    local v = tonumber(os.getenv(name) or "")
    return v or default
end

push.setup {
    gateway = os.getenv("PUSH_GATEWAY") or "http://127.0.0.1:8088/push",
    authorization = os.getenv("PUSH_AUTHORIZATION"),
    wait_ms = env_ms("PUSH_WAIT_MS", 20000),
    fork_window_ms = env_ms("PUSH_FORK_WINDOW_MS", 5000),
    http_timeout_ms = env_ms("PUSH_HTTP_TIMEOUT_MS", 3000),
    htable = os.getenv("PUSH_HTABLE"),
}

function ksr_request_route()
    if KSR.maxfwd.process_maxfwd(10) < 0 then
        KSR.sl.sl_send_reply(483, "Too Many Hops")
        return 1
    end
    if KSR.sanity.sanity_check(17895, 7) < 0 then
        KSR.err("malformed SIP message from " .. KSR.pv.get("$si"))
        return 1
    end

    -- CANCEL goes where its INVITE went; one for an INVITE waiting for a push ends the
    -- wait (the caller gets 487)
    if KSR.is_CANCEL() then
        if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end
        return 1
    end

    if KSR.siputils.has_totag() > 0 then
        route_withindlg()
        return 1
    end

    KSR.hdr.remove("Route")
    if KSR.is_method_in("IS") then KSR.rr.record_route() end

    if KSR.is_REGISTER() and KSR.is_myself_ruri() then
        if KSR.registrar.save("location", 0) > 0 then
            push.registered()  -- a waiting INVITE for this user goes on now
        end
        return 1
    end

    if KSR.corex.has_ruri_user() < 0 then
        KSR.sl.sl_send_reply(484, "Address Incomplete")
        return 1
    end

    if KSR.is_myself_ruri() then
        if KSR.is_INVITE() and push.invite() == 0 then
            return 1  -- relayed to the devices that woke up, or answered 480/487
        end
        local rc = KSR.registrar.lookup("location")
        if rc < 0 then
            KSR.tm.t_newtran()
            KSR.sl.send_reply(rc == -2 and 405 or 404, rc == -2 and "Method Not Allowed"
                              or "Not Found")
            return 1
        end
    end
    if KSR.tm.t_relay() < 0 then KSR.sl.sl_reply_error() end
    return 1
end

function route_withindlg()
    if KSR.rr.loose_route() > 0 then
        if KSR.tm.t_relay() < 0 then KSR.sl.sl_reply_error() end
        return
    end
    if KSR.is_ACK() then
        if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end
        return
    end
    KSR.sl.sl_send_reply(404, "Not here")
end
