"""Built-in modules. Each file declares a ``MODULE`` (script/exports.py ``Module``)."""

from __future__ import annotations

from ..script.exports import Module


def builtin_modules() -> list[Module]:
    """Every module shipped with trio-sip, in KSR order."""
    from . import (
        app_lua,
        async_mod,
        core,
        corex,
        hdr,
        htable,
        http_client,
        ipops,
        kx,
        maxfwd,
        mi,
        mqueue,
        pv,
        registrar,
        rr,
        rtimer,
        rtpengine,
        sanity,
        siputils,
        sl,
        sqlops,
        tm,
        tmx,
        uac,
        usrloc,
    )

    return [
        core.MODULE, core.X_MODULE, pv.MODULE, hdr.MODULE, sl.MODULE, rr.MODULE,
        maxfwd.MODULE, sanity.MODULE, siputils.MODULE, corex.MODULE, kx.MODULE,
        tm.MODULE, tmx.MODULE, async_mod.MODULE, rtpengine.MODULE, registrar.MODULE,
        usrloc.MODULE, htable.MODULE, http_client.MODULE, mqueue.MODULE, rtimer.MODULE,
        sqlops.MODULE, uac.MODULE, ipops.MODULE, mi.MODULE, mi.JSONRPCS_MODULE,
        app_lua.MODULE,
    ]
