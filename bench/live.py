"""Live dashboards benchmark (issue 7): websocket fan-out, and what coalescing saves a browser
when the fleet ingests 10,000 messages a second.

    .venv/bin/python bench/live.py            # full run, ~4 minutes
    .venv/bin/python bench/live.py --quick    # smoke run, ~2 minutes

It builds its own world: a private Redis (the Channels layer), a database `iotfleet_bench_live`
on the machine's PostgreSQL (dropped, migrated, seeded with a tenant of 10,000 devices and an
operator), and a real daphne serving `iotfleet.asgi` (restarted between phases that need another
LIVE_FRAME_SECONDS). Websocket clients are real: Python `websockets` connections logged in with a
Django session (as many as asked), and headless Chromium pages (Playwright) on the overview, the
device list and the page of the busiest device.

1. Fan-out. N clients connected, frames off (LIVE_FRAME_SECONDS=0: one frame per event); a
   pusher process sends `devices.status` events to the tenant's group as fast as the layer takes
   them. Printed: events pushed/s, events delivered/s over all clients (= pushed x N when nobody
   falls behind), lost, and delivery latency p50/p99.
2. Coalescing at a 10,000 messages/s ingest: 10,000 devices sending 1 message/s each plus one
   device sending 100/s. A pusher sends, for 4 batches a second, exactly what ingest sends after
   each batch commits (`telemetry.services.latest_payload` through `iotfleet.live.push_many`, plus a
   few status changes and alert counts), in three ways measured in the same run:
     A  one event per message (the baseline a naive push would be), frames off;
     B  one event per batch and tenant (what ingest does), frames off;
     C  one event per batch, and the consumer's frames (LIVE_FRAME_SECONDS=0.25): what ships.
   Printed per client: frames/s, events/s, KB/s, lost; and for C, in Chromium: fetches/s of each
   page (the partial refreshes `data-live-min-ms` allows) and the longest stall of the page's
   main thread (a 50 ms timer's worst lateness).

Figures depend on the machine; docs/performance.md has a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.databases import database_url, drop_database, fresh_database  # noqa: E402
from tests.servers import free_port, start_redis, wait_for_http  # noqa: E402

DATABASE = "iotfleet_bench_live"
DEVICES = 10_000
HOT = "bench-hot"
INGEST_RATE = 10_000  # messages/s
HOT_RATE = 100  # of them, from the one busy device
BATCHES_PER_SECOND = 4
PASSWORD = "bench-pass-1234"  # noqa: S105 (a throwaway database's throwaway user)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- the world ----------------------------------------------------------------------------------


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.daphne = None
        self.base = ""
        self.frame_seconds: float | None = None

    def setup(self) -> None:

        self.redis = start_redis(self.tmp / "redis", persistent=False)
        fresh_database(DATABASE)
        self.env = {
            "DJANGO_SETTINGS_MODULE": "iotfleet.settings",
            "DATABASE_URL": database_url(DATABASE),
            "REDIS_URL": self.redis.url,
            "CHANNELS_REDIS_URL": self.redis.url,
            "LOG_LEVEL": "WARNING",
            "DATABASE_CONN_MAX_AGE": "60",
        }
        os.environ.update(self.env)
        import django

        django.setup()
        from django.core.management import call_command

        log("migrating the bench database")
        call_command("migrate", verbosity=0)
        self.seed()

    def seed(self) -> None:
        from django.contrib.auth import get_user_model
        from django.utils import timezone

        from devices.models import (
            Device,
            DeviceShadow,
            DeviceStatus,
            DeviceType,
            Metric,
            Role,
            Tenant,
        )
        from devices.services import add_member
        from telemetry.models import LatestReading

        tenant = Tenant.objects.create(name="Bench", slug="bench")
        kind = DeviceType.objects.create(tenant=tenant, name="Sensor")
        metric = Metric.objects.create(
            device_type=kind, name="temperature", unit="°C", min_value=-40, max_value=60
        )
        now = timezone.now()
        log(f"seeding {DEVICES:,} devices")
        devices = [
            Device(
                tenant=tenant,
                key=f"bench-{n:05d}",
                name=f"Sensor {n}",
                device_type=kind,
                status=DeviceStatus.ONLINE,
                last_seen=now,
                credential_hash="!",
            )
            for n in range(DEVICES - 1)
        ]
        devices.append(
            Device(
                tenant=tenant,
                key=HOT,
                name="Busy sensor",
                device_type=kind,
                status=DeviceStatus.ONLINE,
                last_seen=now,
                credential_hash="!",
            )
        )
        Device.objects.bulk_create(devices, batch_size=2000)
        hot = Device.objects.get(key=HOT)
        DeviceShadow.objects.create(device=hot)
        LatestReading.objects.create(device=hot, metric=metric, time=now, value=21.5)
        self.user = get_user_model().objects.create_user("bench", password=PASSWORD)
        add_member(self.user, tenant, Role.OPERATOR)
        self.tenant_id = tenant.pk

    def session_cookie(self) -> str:
        from django.test import Client

        client = Client()
        client.force_login(self.user)
        return client.cookies["sessionid"].value

    def start_daphne(self, frame_seconds: float) -> None:
        import subprocess

        if self.daphne is not None and self.frame_seconds == frame_seconds:
            return  # the same server will do: its clients of the last phase are gone
        self.stop_daphne()
        self.frame_seconds = frame_seconds
        port = free_port()
        log_file = (self.tmp / f"daphne-{port}.log").open("wb")
        self.daphne = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
             "iotfleet.asgi:application"],
            cwd=REPO,
            env={**os.environ, **self.env, "LIVE_FRAME_SECONDS": str(frame_seconds)},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.daphne.log = self.tmp / f"daphne-{port}.log"
        self.base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{self.base}/admin/login/", self.daphne)

    def stop_daphne(self) -> None:
        if self.daphne is not None and self.daphne.poll() is None:
            self.daphne.terminate()
            self.daphne.wait(15)
        self.daphne = None

    def teardown(self) -> None:
        self.stop_daphne()
        self.redis.stop()
        from django.db import connections

        connections.close_all()
        drop_database(DATABASE)


# --- pushers (processes of their own, as the Celery workers are) --------------------------------


def flood_pusher(
    env: dict, tenant_id: int, seconds: float, rate: float | None, result: mp.Queue
) -> None:
    """Phase 1: devices.status events, each stamped, at `rate` a second or (None) as fast as the
    layer takes them."""
    os.environ.update(env)
    import django

    django.setup()
    from channels.layers import get_channel_layer

    from iotfleet.live import MESSAGE_TYPE, tenant_group

    async def run() -> int:
        layer = get_channel_layer()
        group, sent, start = tenant_group(tenant_id), 0, time.time()
        end = start + seconds
        while time.time() < end:
            if rate is not None:
                await asyncio.sleep(max(0.0, start + sent / rate - time.time()))
            await asyncio.gather(
                *(
                    layer.group_send(
                        group,
                        {
                            "type": MESSAGE_TYPE,
                            "event": "devices.status",
                            "payload": {
                                "devices": [{"key": f"bench-{n:05d}", "sent": time.time()}]
                            },
                        },
                    )
                    for n in range(sent, sent + 20)
                )
            )
            sent += 20
        return sent

    result.put(asyncio.run(run()))


async def _send_concurrently(events: list) -> None:
    from channels.layers import get_channel_layer

    from iotfleet.live import MESSAGE_TYPE, tenant_group

    layer = get_channel_layer()
    for start in range(0, len(events), 100):
        await asyncio.gather(
            *(
                layer.group_send(
                    tenant_group(tenant), {"type": MESSAGE_TYPE, "event": event, "payload": body}
                )
                for tenant, event, body in events[start : start + 100]
            )
        )


def ingest_pusher(env: dict, tenant_id: int, seconds: float, mode: str, result: mp.Queue) -> None:
    """Phase 2: what the ingest pushes at INGEST_RATE messages/s, per message ("message") or per
    batch ("batch"), through the real iotfleet.live.push_many and latest_payload."""
    os.environ.update(env)
    import django

    django.setup()
    from iotfleet.live import push_many
    from telemetry.services import latest_payload

    interval = 1 / BATCHES_PER_SECOND
    per_batch = INGEST_RATE // BATCHES_PER_SECOND
    hot_per_batch = HOT_RATE // BATCHES_PER_SECOND
    cursor, pushed, batches = 0, 0, 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        # This batch's messages: the busy device's share, and the next devices in turn.
        keys = [
            f"bench-{(cursor + n) % (DEVICES - 1):05d}" for n in range(per_batch - hot_per_batch)
        ]
        cursor += len(keys)
        if mode == "message":
            events = [
                (tenant_id, "telemetry.latest", {"devices": [key], "count": 1}) for key in keys
            ]
            events += [
                (tenant_id, "telemetry.latest", {"devices": [HOT], "count": 1})
            ] * hot_per_batch
        else:
            distinct = sorted({*keys, HOT})
            events = [(tenant_id, "telemetry.latest", latest_payload(distinct, per_batch))]
            # A few devices change state, and open alerts count on, as in a real batch.
            changed = [{"key": keys[n], "status": "online", "last_seen": None} for n in range(5)]
            counted = [{"id": n, "count": batches, "state": "open"} for n in range(10)]
            events.append((tenant_id, "devices.status", {"devices": changed}))
            events.append((tenant_id, "alerts.counted", {"alerts": counted}))
        if mode == "message":
            # The naive design at its best: a hundred sends in flight at once, not one by one.
            asyncio.run(_send_concurrently(events))
        else:
            push_many(events)  # outside a transaction: sent at once
        pushed += len(events)
        batches += 1
        time.sleep(max(0.0, start + batches * interval - time.monotonic()))
    result.put({"events": pushed, "batches": batches, "seconds": time.monotonic() - start})


# --- websocket clients --------------------------------------------------------------------------


@dataclass
class ClientStats:
    frames: int = 0
    events: int = 0
    items: int = 0  # devices named by the events (what they stand for)
    bytes: int = 0
    closed: bool = False
    latencies: list | None = None


async def run_clients(
    base: str, cookie: str, count: int, seconds: float, started: mp.Event | None = None
) -> list[ClientStats]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    uri = base.replace("http://", "ws://") + "/ws/fleet/"
    stats = [ClientStats(latencies=[]) for _ in range(count)]
    sockets = []
    for _ in range(count):
        socket = await connect(
            uri,
            origin=base,
            additional_headers={"Cookie": f"sessionid={cookie}"},
            max_size=None,
            open_timeout=60,
            ping_interval=None,  # a loaded server answering pings late is not a closed socket
        )
        first = json.loads(await socket.recv())
        assert first["events"][0]["event"] == "live.ready", first
        sockets.append(socket)

    async def read(socket, stat: ClientStats, until: float) -> None:
        while True:
            timeout = until - time.monotonic()
            if timeout <= 0:
                return
            try:
                message = await asyncio.wait_for(socket.recv(), timeout)
            except TimeoutError:
                return
            except ConnectionClosed:
                stat.closed = True  # the server gave up on this socket (a page would reconnect)
                return
            now = time.time()
            frame = json.loads(message)
            stat.frames += 1
            stat.bytes += len(message)
            for event in frame["events"]:
                stat.events += 1
                payload = event["payload"]
                devices = payload.get("devices", [])
                # A merged event stands for every item it carries; a truncated one, for the
                # count it says it saw.
                stat.items += payload["count"] if payload.get("truncated") else len(devices)
                for device in devices:
                    if isinstance(device, dict) and "sent" in device:
                        stat.latencies.append(now - device["sent"])

    if started is not None:
        started.set()
    until = time.monotonic() + seconds
    await asyncio.gather(*(read(s, st, until) for s, st in zip(sockets, stats, strict=True)))
    for socket, stat in zip(sockets, stats, strict=True):
        if not stat.closed:
            await socket.close()
    return stats


# --- Chromium pages -----------------------------------------------------------------------------

PAGES = {"overview": "/", "device list": "/devices/", "busy device page": f"/devices/{HOT}/"}


def browser_pages(base: str, seconds: float, ready: mp.Event, go: mp.Event, result: mp.Queue):
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM_ARGS, chromium_path

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.set_default_timeout(120_000)
        page.goto(f"{base}/admin/login/?next=/")
        page.fill("#id_username", "bench")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(f"{base}/")
        pages = {}
        for name, path in PAGES.items():
            tab = page if name == "overview" else context.new_page()
            if tab is not page:
                tab.set_default_timeout(120_000)
                tab.goto(f"{base}{path}")
            tab.wait_for_function("document.documentElement.dataset.live === 'connected'")
            tab.evaluate(
                """() => { window.__lag = 0; let last = performance.now();
                setInterval(() => { const now = performance.now();
                  window.__lag = Math.max(window.__lag, now - last - 50); last = now; }, 50); }"""
            )
            pages[name] = tab
        ready.set()
        go.wait(120)
        before = {n: t.evaluate("({...IoTFleetLive.stats})") for n, t in pages.items()}
        for tab in pages.values():
            tab.evaluate("window.__lag = 0")
        time.sleep(seconds)
        after = {
            n: t.evaluate("({...IoTFleetLive.stats, lag: window.__lag})") for n, t in pages.items()
        }
        browser.close()
    result.put(
        {
            name: {
                "frames": after[name]["frames"] - before[name]["frames"],
                "events": after[name]["events"] - before[name]["events"],
                "fetches": after[name]["fetches"] - before[name]["fetches"],
                "lag_ms": after[name]["lag"],
            }
            for name in pages
        }
    )


# --- phases -------------------------------------------------------------------------------------


def fan_out(
    world: World, clients: int, seconds: float, frame_seconds: float, rate: float | None
) -> dict:
    world.start_daphne(frame_seconds=frame_seconds)
    cookie = world.session_cookie()
    result: mp.Queue = mp.Queue()

    async def run() -> tuple[list[ClientStats], int]:
        started = asyncio.Event()
        loop = asyncio.get_running_loop()
        pusher = mp.Process(
            target=flood_pusher, args=(world.env, world.tenant_id, seconds, rate, result)
        )

        async def start_pusher() -> None:
            await started.wait()
            pusher.start()

        class Flag:  # run_clients sets it once every client is connected
            def set(self) -> None:
                loop.call_soon(started.set)

        stats, _ = await asyncio.gather(
            run_clients(world.base, cookie, clients, seconds + 8, Flag()), start_pusher()
        )
        pusher.join(60)
        return stats, result.get(timeout=30)

    stats, pushed = asyncio.run(run())
    delivered = sum(s.items for s in stats)
    latencies = sorted(x for s in stats for x in s.latencies)
    return {
        "clients": clients,
        "rate": rate,
        "frame_seconds": frame_seconds,
        "frames_per_s": sum(s.frames for s in stats) / seconds,
        "pushed": pushed,
        "pushed_per_s": pushed / seconds,
        "delivered_per_s": delivered / seconds,
        "lost": max(0, pushed * clients - delivered) / (pushed * clients),
        "closed": sum(s.closed for s in stats),
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan"),
    }


def coalescing(world: World, mode: str, frame_seconds: float, clients: int, seconds: float,
               with_browser: bool) -> dict:  # fmt: skip
    world.start_daphne(frame_seconds=frame_seconds)
    cookie = world.session_cookie()
    result: mp.Queue = mp.Queue()
    browser_result: mp.Queue = mp.Queue()
    ready, go = mp.Event(), mp.Event()
    browser = None
    if with_browser:
        browser = mp.Process(
            target=browser_pages, args=(world.base, seconds, ready, go, browser_result)
        )
        browser.start()
        if not ready.wait(180):
            raise RuntimeError("Chromium did not get its pages ready")
    pusher = mp.Process(
        target=ingest_pusher, args=(world.env, world.tenant_id, seconds, mode, result)
    )

    async def run() -> list[ClientStats]:
        loop = asyncio.get_running_loop()

        class Flag:
            def set(self) -> None:
                loop.call_soon(lambda: (pusher.start(), go.set()))

        return await run_clients(world.base, cookie, clients, seconds + 8, Flag())

    stats = asyncio.run(run())
    pusher.join(60)
    pushed = result.get(timeout=30)
    pages = browser_result.get(timeout=120) if browser else {}
    if browser:
        browser.join(60)
    frames = statistics.mean(s.frames for s in stats)
    events = statistics.mean(s.events for s in stats)
    kbytes = statistics.mean(s.bytes for s in stats) / 1024
    return {
        "mode": mode,
        "frame_seconds": frame_seconds,
        "messages_per_s": INGEST_RATE * pushed["batches"] / BATCHES_PER_SECOND / pushed["seconds"],
        "events_pushed_per_s": pushed["events"] / pushed["seconds"],
        "frames_per_s": frames / seconds,
        "events_per_s": events / seconds,
        "kb_per_s": kbytes / seconds,
        "closed": sum(s.closed for s in stats),
        "lost": max(0.0, pushed["events"] * seconds / pushed["seconds"] - events)
        / max(pushed["events"] * seconds / pushed["seconds"], 1),
        "pages": {
            name: {
                "fetches_per_s": page["fetches"] / seconds,
                "frames_per_s": page["frames"] / seconds,
                "lag_ms": page["lag_ms"],
            }
            for name, page in pages.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases, fewer clients")
    options = parser.parse_args()
    seconds = 6.0 if options.quick else 15.0
    sizes = [10, 50] if options.quick else [10, 100, 300]
    fan_out_plan = [(0, n, rate) for rate in (100, None) for n in sizes]
    fan_out_plan += [(0.25, sizes[-1], 100), (0.25, sizes[-1], None)]
    coalescing_clients = 10 if options.quick else 50
    mp.set_start_method("spawn")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        world = World(Path(tmp))
        world.setup()
        try:
            fans = []
            for frame_seconds, clients, rate in fan_out_plan:
                offered = "flood" if rate is None else f"{rate:g}/s"
                log(f"fan-out: {clients} clients, {offered}, frames every {frame_seconds:g} s")
                fans.append(fan_out(world, clients, seconds, frame_seconds, rate))
            runs = []
            for mode, frame_seconds, with_browser in (
                ("message", 0, False),
                ("batch", 0, False),
                ("batch", 0.25, True),
            ):
                log(f"coalescing: events per {mode}, frames every {frame_seconds:g} s")
                runs.append(
                    coalescing(
                        world, mode, frame_seconds, coalescing_clients, seconds, with_browser
                    )
                )
        except BaseException:
            if world.daphne is not None:
                log("daphne's log:\n" + world.daphne.log.read_text(errors="replace")[-5000:])
            raise
        finally:
            world.teardown()
    report(fans, runs, coalescing_clients, seconds, time.monotonic() - started, options.quick)


def report(fans, runs, clients, seconds, took, quick) -> None:
    kind = "quick" if quick else "full"
    print(
        f"IoTFleet live dashboards benchmark ({kind} run, {os.cpu_count()} CPUs, "
        f"{seconds:g} s phases; {took:.0f} s)\n"
    )
    print("1. fan-out: devices.status events (one device each) to N connected clients, at 100/s")
    print("   or as fast as the layer takes them (flood); delivered counts the devices named")
    header = (
        f"{'frames':>7} {'clients':>8} {'offered':>8} {'pushed/s':>9} {'frames/s':>9} "
        f"{'delivered/s':>12}"
    )
    print(f"{header} {'lost':>6} {'p50 ms':>7} {'p99 ms':>7} {'closed':>7}")
    for fan in fans:
        frames = "off" if not fan["frame_seconds"] else f"{fan['frame_seconds']:g} s"
        offered = "flood" if fan["rate"] is None else f"{fan['rate']:g}/s"
        print(
            f"{frames:>7} {fan['clients']:>8} {offered:>8} {fan['pushed_per_s']:>9,.0f} "
            f"{fan['frames_per_s']:>9,.0f} {fan['delivered_per_s']:>12,.0f} {fan['lost']:>6.0%} "
            f"{fan['p50_ms']:>7.0f} {fan['p99_ms']:>7.0f} {fan['closed']:>7}"
        )
    print(
        f"\n2. coalescing at a {INGEST_RATE:,} messages/s ingest ({DEVICES:,} devices, one at "
        f"{HOT_RATE}/s), {BATCHES_PER_SECOND} batches/s, {clients} websocket clients"
    )
    print(
        f"{'':40} {'pushed/s':>9} {'frames/s':>9} {'events/s':>9} {'KB/s':>7} {'lost':>6} "
        f"{'closed':>7}"
    )
    labels = {
        ("message", 0): "A one event per message, frames off",
        ("batch", 0): "B one event per batch, frames off",
        ("batch", 0.25): "C one event per batch, 0.25 s frames",
    }
    for run in runs:
        label = labels[(run["mode"], run["frame_seconds"])]
        lost = "-" if run["frame_seconds"] else f"{run['lost']:.0%}"  # merged events: not lost
        print(
            f"{label:40} {run['events_pushed_per_s']:>9,.0f} {run['frames_per_s']:>9.1f} "
            f"{run['events_per_s']:>9.1f} {run['kb_per_s']:>7.1f} {lost:>6} {run['closed']:>7}"
        )
    base, shipped = runs[0], runs[-1]
    fewer_frames = base["frames_per_s"] / max(shipped["frames_per_s"], 1e-9)
    fewer_bytes = base["kb_per_s"] / max(shipped["kb_per_s"], 1e-9)
    print(
        f"\nper client, C against A: {fewer_frames:,.0f}x fewer frames, {fewer_bytes:.1f}x fewer "
        f"bytes; A lost {base['lost']:.0%} of its {base['events_pushed_per_s']:,.0f} events/s"
    )
    if shipped["pages"]:
        print(f"\nChromium during C ({shipped['messages_per_s']:,.0f} messages/s):")
        print(f"{'page':20} {'frames/s':>9} {'fetches/s':>10} {'worst stall ms':>15}")
        for name, page in shipped["pages"].items():
            print(
                f"{name:20} {page['frames_per_s']:>9.1f} {page['fetches_per_s']:>10.2f} "
                f"{page['lag_ms']:>15.0f}"
            )


if __name__ == "__main__":
    main()
