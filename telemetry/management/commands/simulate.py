"""`manage.py simulate`: demo devices publishing real MQTT telemetry (telemetry/simulator.py)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from devices.broker_accounts import BrokerAccountError
from ota.simulation import OtaOptions
from telemetry.simulator import Options, simulate


def _seconds_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(":")
    return float(low), float(high or low)


class Command(BaseCommand):
    help = (
        "Simulate the first N enabled devices (by key): one MQTT connection each with a last "
        "will, online status, reported shadow and drifting telemetry, until SIGINT/SIGTERM."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--devices", type=int, default=None, help="How many devices (default: all enabled)."
        )
        parser.add_argument("--tenant", help="Only devices of this tenant (its slug).")
        parser.add_argument(
            "--rate",
            type=float,
            default=0.2,
            help="Telemetry messages per second per device (default 0.2: one every 5 s).",
        )
        parser.add_argument(
            "--duration", type=float, default=None, help="Stop after this many seconds."
        )
        parser.add_argument(
            "--flaky",
            type=float,
            default=0.0,
            help="Probability per device per minute of a power cut: the broker publishes its "
            "will and it boots again 30-120 s later (default 0).",
        )
        parser.add_argument(
            "--flaky-downtime",
            type=_seconds_range,
            default=(30.0, 120.0),
            metavar="SECONDS[:MAX]",
            help="How long a device stays without power (default 30:120).",
        )
        parser.add_argument(
            "--flaky-period",
            type=float,
            default=60.0,
            metavar="SECONDS",
            help="The period --flaky's probability refers to (default 60; shorter for tests).",
        )
        parser.add_argument(
            "--bad",
            type=float,
            default=0.0,
            help="Fraction of telemetry messages sent malformed (default 0).",
        )
        parser.add_argument(
            "--connect-rate",
            type=float,
            default=200.0,
            help="New MQTT connections per second at start (default 200).",
        )

        parser.add_argument(
            "--degrading",
            type=float,
            default=0.0,
            help="Share of the devices with a wear indicator that degrade towards its failure "
            "threshold (default 0; devices seed_demo planned keep their plan).",
        )
        # Firmware updates (ota/simulation.py): devices answer the jobs of rollouts.
        parser.add_argument(
            "--ota-success",
            type=float,
            default=1.0,
            help="Probability that a firmware install succeeds (default 1).",
        )
        parser.add_argument(
            "--ota-delay",
            type=_seconds_range,
            default=(2.0, 5.0),
            metavar="SECONDS[:MAX]",
            help="How long an install takes once downloaded (default 2:5).",
        )
        parser.add_argument(
            "--ota-reboot",
            type=_seconds_range,
            default=(1.0, 3.0),
            metavar="SECONDS[:MAX]",
            help="How long a device is off while it reboots into new firmware (default 1:3).",
        )
        parser.add_argument(
            "--no-ota", action="store_true", help="Do not answer firmware update jobs."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        low, high = options["flaky_downtime"]
        if options["devices"] is not None and options["devices"] < 1:
            raise CommandError("--devices must be 1 or more.")
        if options["rate"] <= 0 or options["connect_rate"] <= 0:
            raise CommandError("--rate and --connect-rate must be positive.")
        if not 0 <= options["flaky"] <= 1 or not 0 <= options["bad"] <= 1:
            raise CommandError("--flaky and --bad are probabilities, between 0 and 1.")
        if not 0 <= options["degrading"] <= 1:
            raise CommandError("--degrading is a share of the devices, between 0 and 1.")
        if not 0 <= low <= high or options["flaky_period"] <= 0:
            raise CommandError("--flaky-downtime needs 0 <= SECONDS <= MAX; --flaky-period > 0.")
        ota = None
        if not options["no_ota"]:
            if not 0 <= options["ota_success"] <= 1:
                raise CommandError("--ota-success is a probability, between 0 and 1.")
            for name in ("ota_delay", "ota_reboot"):
                first, last = options[name]
                if not 0 <= first <= last:
                    raise CommandError(f"--{name.replace('_', '-')} needs 0 <= SECONDS <= MAX.")
            ota = OtaOptions(
                success=options["ota_success"],
                delay=options["ota_delay"],
                reboot=options["ota_reboot"],
            )
        simulation = Options(
            rate=options["rate"],
            duration=options["duration"],
            flaky=options["flaky"],
            flaky_period=options["flaky_period"],
            flaky_downtime=(low, high),
            bad=options["bad"],
            connect_rate=options["connect_rate"],
            degrading=options["degrading"],
            ota=ota,
        )
        try:
            simulated = simulate(options["devices"], options["tenant"], simulation)
        except (ValueError, BrokerAccountError) as error:
            raise CommandError(str(error)) from error
        if not simulated:
            raise CommandError("No enabled devices to simulate: create some with `make seed`.")
