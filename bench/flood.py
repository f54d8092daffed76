"""Connection flood for bench/flood.sh (issue 21, defects 1 and 2).

Holds up to N_GRPC TLS connections to the device port that complete the
handshake without a client certificate and never send the HTTP/2 preface,
and N_REST sockets to the REST port that send half a request head and stop,
from many loopback source addresses; every connection the server drops is
reopened at once (a sustained flood) for SECONDS after every slot has tried
once (then "ramped" goes to stderr). Prints a JSON summary at the end.

    python3 flood.py GRPC_PORT REST_PORT N_GRPC N_REST GRPC_ADDRS REST_ADDRS SECONDS
"""

import asyncio
import json
import ssl
import sys
import time

HOST = "127.0.0.1"


async def main():
    grpc_port, rest_port, n_grpc, n_rest, grpc_addrs, rest_addrs = map(int, sys.argv[1:7])
    seconds = float(sys.argv[7])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    s = {k: 0 for k in (
        "grpc_held", "grpc_peak", "grpc_opened", "grpc_refused", "grpc_closed_by_server",
        "rest_held", "rest_peak", "rest_opened", "rest_refused_503", "rest_refused_other",
        "rest_closed_by_server")}
    stop = asyncio.Event()
    ramped = asyncio.Event()
    ramp = asyncio.Semaphore(256)  # connects in flight at once
    tried = 0

    def mark_tried():
        nonlocal tried
        tried += 1
        if tried == n_grpc + n_rest:
            print("ramped", file=sys.stderr, flush=True)
            ramped.set()

    async def grpc_slot(i):
        src = f"127.0.2.{1 + i % grpc_addrs}"
        first = True
        while not stop.is_set():
            try:
                async with ramp:
                    r, w = await asyncio.wait_for(asyncio.open_connection(
                        HOST, grpc_port, ssl=ctx, local_addr=(src, 0),
                        server_hostname="127.0.0.1"), 20)
            except Exception:
                s["grpc_refused"] += 1
                if first:
                    first = False
                    mark_tried()
                await asyncio.sleep(1)
                continue
            s["grpc_opened"] += 1
            s["grpc_held"] += 1
            s["grpc_peak"] = max(s["grpc_peak"], s["grpc_held"])
            if first:
                first = False
                mark_tried()
            try:
                # The server's HTTP/2 SETTINGS arrive first; read (and never
                # answer) until it closes the connection.
                while await r.read(4096):
                    pass
            except Exception:
                pass
            s["grpc_closed_by_server"] += 1
            s["grpc_held"] -= 1
            w.close()

    async def rest_slot(i):
        src = f"127.0.3.{1 + i % rest_addrs}"
        first = True
        while not stop.is_set():
            try:
                async with ramp:
                    r, w = await asyncio.wait_for(
                        asyncio.open_connection(HOST, rest_port, local_addr=(src, 0)), 20)
                w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                await w.drain()
            except Exception:
                s["rest_refused_other"] += 1
                if first:
                    first = False
                    mark_tried()
                await asyncio.sleep(1)
                continue
            s["rest_opened"] += 1
            s["rest_held"] += 1
            s["rest_peak"] = max(s["rest_peak"], s["rest_held"])
            if first:
                first = False
                mark_tried()
            try:
                data = await r.read(64)
                if data.startswith(b"HTTP/1.1 503"):
                    s["rest_refused_503"] += 1
                else:
                    s["rest_closed_by_server"] += 1
            except Exception:
                s["rest_closed_by_server"] += 1
            s["rest_held"] -= 1
            w.close()
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(grpc_slot(i)) for i in range(n_grpc)]
    tasks += [asyncio.create_task(rest_slot(i)) for i in range(n_rest)]
    t0 = time.monotonic()
    await ramped.wait()
    s["ramp_seconds"] = round(time.monotonic() - t0, 1)
    await asyncio.sleep(seconds)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    s["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(s), flush=True)


asyncio.run(main())
