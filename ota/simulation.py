"""The simulated devices' side of OTA (telemetry/simulator.py drives it; docs/ota.md has the
protocol a real device follows).

A simulated device subscribes to `fleet/{key}/ota`. On a job it reports `downloading`, fetches
the image over HTTP in two Range requests (as a device resuming after a dropped link does),
checks the sha256 and reports the mismatch as a failure, reports `installing`, and after the
install delay either fails (with the configured probability) or reboots: its connection drops
without DISCONNECT (the broker publishes its will), it boots after the reboot delay with the new
version, sequence numbers from 0, reports it in its shadow and says `succeeded` for the job.

Downloads run on a small thread pool, so the simulator's one event-loop thread never blocks on
HTTP; everything else happens on that thread, through the simulator's timers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from telemetry.simulator import SimulatedDevice, Simulator

log = logging.getLogger(__name__)

QOS = 1
DOWNLOAD_TIMEOUT = 30.0
DOWNLOAD_THREADS = 4


@dataclass(frozen=True)
class OtaOptions:
    success: float = 1.0  # probability that an install succeeds
    delay: tuple[float, float] = (2.0, 5.0)  # seconds spent installing
    reboot: tuple[float, float] = (1.0, 3.0)  # seconds without power while rebooting


def fetch(url: str, size: int, timeout: float = DOWNLOAD_TIMEOUT) -> bytes:
    """The image, in two ranged requests; a server that ignores Range (200) gives it whole."""
    halves = [(0, size // 2 - 1), (size // 2, size - 1)] if size > 1 else [(0, max(0, size - 1))]
    parts: list[bytes] = []
    for first, last in halves:
        request = urllib.request.Request(url, headers={"Range": f"bytes={first}-{last}"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = response.read()
            if response.status == 200:
                return body
            parts.append(body)
    return b"".join(parts)


@dataclass
class Job:
    device: SimulatedDevice
    body: dict
    download: Future | None = None


class OtaAgent:
    """Answers the OTA jobs of a simulator's devices."""

    def __init__(self, simulator: Simulator, options: OtaOptions) -> None:
        self.simulator = simulator
        self.options = options
        self.executor = ThreadPoolExecutor(DOWNLOAD_THREADS, thread_name_prefix="ota-download")
        self.downloading: list[Job] = []
        self.seen: dict[str, set[int]] = {}
        self.after_boot: dict[str, dict] = {}  # key → the job to report succeeded after reboot
        self.installed = 0
        self.failed = 0

    # Hooks the simulator calls.

    def connected(self, device: SimulatedDevice, client: Any) -> None:
        client.subscribe(device.topic("ota"), qos=QOS)
        job = self.after_boot.pop(device.key, None)
        if job is not None:
            self.report(device, job, "succeeded", version=job["version"])

    def received(self, device: SimulatedDevice, payload: bytes) -> None:
        try:
            job = json.loads(payload)
            number, version, url = int(job["job"]), str(job["version"]), str(job["url"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s: unreadable OTA job ignored", device.key)
            return
        seen = self.seen.setdefault(device.key, set())
        if number in seen:
            return  # a redelivered job: already being handled
        seen.add(number)
        if version == device.profile.firmware_version:
            self.report(device, job, "succeeded", version=version)
            return
        self.report(device, job, "downloading", progress=0)
        size = int(job.get("size") or 0)
        pending = Job(device, job, self.executor.submit(fetch, url, size))
        self.downloading.append(pending)
        log.info("%s: downloading %s from %s", device.key, version, url.split("/ota/")[0])

    def poll(self) -> None:
        """Take finished downloads (called on every turn of the simulator's loop)."""
        if not self.downloading:
            return
        done = [job for job in self.downloading if job.download and job.download.done()]
        if not done:
            return
        self.downloading = [job for job in self.downloading if job not in done]
        for job in done:
            self.downloaded(job)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # A job's life.

    def downloaded(self, job: Job) -> None:
        device, body = job.device, job.body
        try:
            image = job.download.result() if job.download else b""
        except (urllib.error.URLError, OSError, ValueError) as error:
            self.fail(device, body, f"download failed: {getattr(error, 'reason', error)}")
            return
        digest = hashlib.sha256(image).hexdigest()
        if digest != body.get("sha256"):
            self.fail(
                device,
                body,
                f"sha256 mismatch: got {digest[:16]}…, job says "
                f"{str(body.get('sha256'))[:16]}…; image refused",
            )
            return
        self.report(device, body, "downloading", progress=100)
        self.report(device, body, "installing")
        low, high = self.options.delay
        delay = self.simulator.rng.uniform(low, high)
        self.simulator.at(time.monotonic() + delay, device, lambda d: self.finish(d, body))

    def finish(self, device: SimulatedDevice, body: dict) -> None:
        if self.simulator.rng.random() >= self.options.success:
            self.fail(device, body, "simulated install failure: flash write error")
            return
        self.installed += 1
        self.reboot(device, body)

    def reboot(self, device: SimulatedDevice, body: dict) -> None:
        """Power off without DISCONNECT (the will says offline), boot later on the new version."""
        from telemetry.simulator import DeviceState

        simulator = self.simulator
        simulator.cut_connection(device)
        device.epoch += 1
        device.state = DeviceState.OFF
        device.profile = dataclasses.replace(device.profile, firmware_version=body["version"])
        self.after_boot[device.key] = body
        low, high = self.options.reboot
        log.info("%s: installed %s, rebooting", device.key, body["version"])
        simulator.at(time.monotonic() + simulator.rng.uniform(low, high), device, simulator.boot)

    def fail(self, device: SimulatedDevice, body: dict, reason: str) -> None:
        self.failed += 1
        log.info("%s: update to %s failed: %s", device.key, body.get("version"), reason)
        self.report(device, body, "failed", reason=reason)

    def report(self, device: SimulatedDevice, body: dict, state: str, **extra: Any) -> None:
        from telemetry.simulator import DeviceState

        if device.client is None or device.state != DeviceState.ONLINE:
            return  # without a connection the report is lost, as a real device's would be
        message = {"job": body.get("job"), "state": state, **extra}
        device.client.publish(device.topic("ota/status"), json.dumps(message), qos=QOS)
