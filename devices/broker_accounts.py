"""Devices' MQTT accounts on Mosquitto, kept by its dynamic security plugin (docs/mqtt.md).

Each device is a dynsec client: its key is the username and the only client id it may connect
with (so no device can take over another's session), its secret the password, and its own role
`device:{key}` lets it publish, subscribe and receive under `fleet/{key}/#` only. Mosquitto 2.0
has no `%u` in dynsec ACLs (2.0.11 matches it literally), hence one role per device.

The platform drives the plugin as MQTT_URL's user, the admin `mosquitto_ctrl dynsec init`
created: commands go as JSON to `$CONTROL/dynamic-security/v1`, many in one message, and the
broker answers each, in order, in one message on `.../response`. With MQTT_DYNSEC_ENABLED off
every function here does nothing, so a development broker that lets anyone in keeps working.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from django.conf import settings
from paho.mqtt.enums import CallbackAPIVersion

from iotfleet.services_check import MqttTarget

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
# Mosquitto 2.0's plugin rewrites its whole JSON file after every command (measured on 2.0.11:
# ~8 µs per account it holds, per command), and the broker serves nobody while it works through a
# message. Messages of 100 commands keep each pause short (under a second up to ~1,000 accounts,
# ~8 s at 10,000) so devices and the ingest workers get their turn between them.
COMMANDS_PER_MESSAGE = 100
TIMEOUT = 10.0
# On top of TIMEOUT, how long a busy broker may take per command before its answer counts as lost.
SECONDS_PER_COMMAND = 0.25
HELP = "see docs/mqtt.md"

PLATFORM_ROLE = "iotfleet-platform"
# What the platform's own user (MQTT_URL) does besides administering accounts: the ingest workers
# share subscriptions to what devices send, and the platform publishes commands, desired shadows
# and OTA jobs to them. Mosquitto 2.0 checks a shared subscription's ACL with its $share/ prefix.
PLATFORM_ACLS = [
    *(
        {"acltype": "subscribePattern", "topic": f"$share/ingest/fleet/+/{kind}", "allow": True}
        for kind in ("telemetry", "status", "shadow/reported")
    ),
    {"acltype": "publishClientReceive", "topic": "fleet/#", "allow": True},
    {"acltype": "publishClientSend", "topic": "fleet/#", "allow": True},
]

CLIENT_EXISTS = "Client already exists"
CLIENT_MISSING = "Client not found"
ROLE_EXISTS = "Role already exists"
ROLE_MISSING = "Role not found"
ACL_EXISTS = "ACL with this topic already exists"


class BrokerAccountError(Exception):
    """Mosquitto did not make an account change; the message says what failed and what to do."""


@dataclass(frozen=True)
class DeviceAccount:
    """A device's MQTT login: its key and the plain secret, known only at create or rotation."""

    key: str
    secret: str
    enabled: bool = True


def dynsec_enabled() -> bool:
    return bool(getattr(settings, "MQTT_DYNSEC_ENABLED", False))


def device_role(key: str) -> str:
    return f"device:{key}"


def device_acls(key: str) -> list[dict[str, Any]]:
    """A device may publish, subscribe and receive under its own `fleet/{key}/#` only."""
    topic = f"fleet/{key}/#"
    return [
        {"acltype": acltype, "topic": topic, "allow": True}
        for acltype in ("publishClientSend", "subscribePattern", "publishClientReceive")
    ]


# --- What the platform does with device accounts ------------------------------------------------


def provision_devices(accounts: Iterable[DeviceAccount | tuple[str, str, bool]]) -> None:
    """Give each device its account and role; an account that exists already is made anew with
    this secret (a device re-created with a key that had an account keeps no old password)."""
    accounts = [a if isinstance(a, DeviceAccount) else DeviceAccount(*a) for a in accounts]
    if not dynsec_enabled() or not accounts:
        return
    with control_channel() as channel:
        commands, subjects = _for_each(accounts, _create_account)
        replies = channel.run(commands, subjects=subjects, tolerated={ROLE_EXISTS, CLIENT_EXISTS})
        stale = {reply.subject for reply in replies if reply.error in {ROLE_EXISTS, CLIENT_EXISTS}}
        if stale:
            # Left over from a device deleted while dynamic security was off, or a half-finished
            # earlier attempt: start the account over so its password and rights are ours.
            commands, subjects = _for_each(
                [account for account in accounts if account.key in stale],
                lambda account: [*_delete_account(account.key), *_create_account(account)],
            )
            channel.run(commands, subjects=subjects, tolerated={CLIENT_MISSING, ROLE_MISSING})


def set_device_passwords(accounts: Iterable[DeviceAccount]) -> None:
    """Change the devices' passwords; the broker disconnects a device logged in with the old one.

    A device without an account (created before dynamic security was turned on) gets one.
    """
    accounts = list(accounts)
    if not dynsec_enabled() or not accounts:
        return
    with control_channel() as channel:
        commands, subjects = _for_each(
            accounts,
            lambda a: [{"command": "setClientPassword", "username": a.key, "password": a.secret}],
        )
        replies = channel.run(commands, subjects=subjects, tolerated={CLIENT_MISSING})
    missing = {reply.subject for reply in replies if reply.error == CLIENT_MISSING}
    if missing:
        provision_devices(account for account in accounts if account.key in missing)


def set_device_password(key: str, secret: str, enabled: bool = True) -> None:
    set_device_passwords([DeviceAccount(key, secret, enabled)])


def set_device_enabled(key: str, enabled: bool) -> None:
    """Let the device log in again, or refuse its logins (disconnecting it if it is on)."""
    if not dynsec_enabled():
        return
    with control_channel() as channel:
        channel.run(
            [{"command": "enableClient" if enabled else "disableClient", "username": key}],
            subjects=[key],
            # A device without an account cannot log in anyway.
            tolerated=set() if enabled else {CLIENT_MISSING},
            hint=f"rotate the credentials of {key!r} to give it an account (with a new secret)"
            if enabled
            else None,
        )


def remove_devices(keys: Iterable[str]) -> None:
    """Delete the devices' accounts and roles (disconnecting them); missing ones are fine."""
    keys = list(keys)
    if not dynsec_enabled() or not keys:
        return
    with control_channel() as channel:
        commands, subjects = _for_each(keys, _delete_account)
        channel.run(commands, subjects=subjects, tolerated={CLIENT_MISSING, ROLE_MISSING})


def grant_platform_access() -> list[str]:
    """Make sure MQTT_URL's user holds PLATFORM_ROLE with PLATFORM_ACLS; returns what changed.

    Mosquitto disconnects every client whose rights change so that it logs in again with the new
    ones: this very connection included. So each change that may do that gets a connection of its
    own, and the outcome is read back afresh.
    """
    user = platform_user()
    done: list[str] = []
    with control_channel() as channel:
        role = _platform_role(channel)
        if role is None:
            channel.run(
                [{"command": "createRole", "rolename": PLATFORM_ROLE, "acls": PLATFORM_ACLS}],
                subjects=[PLATFORM_ROLE],
            )
            done.append(f"created the role {PLATFORM_ROLE}")
        else:
            have = {(acl["acltype"], acl["topic"]) for acl in role.get("acls", [])}
            missing = [acl for acl in PLATFORM_ACLS if (acl["acltype"], acl["topic"]) not in have]
            if missing:
                channel.run(
                    [{"command": "addRoleACL", "rolename": PLATFORM_ROLE, **a} for a in missing],
                    subjects=[PLATFORM_ROLE] * len(missing),
                    tolerated={ACL_EXISTS},
                    kicked_ok=True,
                )
                done.append(
                    f"added to the role {PLATFORM_ROLE}: "
                    + ", ".join(f"{a['acltype']} {a['topic']}" for a in missing)
                )
    if PLATFORM_ROLE not in _roles_of(user):
        with control_channel() as channel:
            channel.run(
                [{"command": "addClientRole", "username": user, "rolename": PLATFORM_ROLE}],
                subjects=[user],
                kicked_ok=True,
            )
        if PLATFORM_ROLE not in _roles_of(user):
            raise BrokerAccountError(
                f"Mosquitto at {target().address} did not give {user!r} the role "
                f"{PLATFORM_ROLE}: run mqtt_setup again and check the broker's log ({HELP})."
            )
        done.append(f"gave {user!r} the role {PLATFORM_ROLE}")
    return done


def _platform_role(channel: ControlChannel) -> dict[str, Any] | None:
    (reply,) = channel.run(
        [{"command": "getRole", "rolename": PLATFORM_ROLE}],
        subjects=[PLATFORM_ROLE],
        tolerated={ROLE_MISSING},
    )
    return None if reply.error else reply.data["role"]


def _roles_of(user: str) -> set[str]:
    with control_channel() as channel:
        (reply,) = channel.run([{"command": "getClient", "username": user}], subjects=[user])
    return {entry["rolename"] for entry in reply.data["client"].get("roles", [])}


def platform_user() -> str:
    user = target().username
    if not user:
        raise BrokerAccountError(
            "MQTT_DYNSEC_ENABLED is on but MQTT_URL names no user: set it to "
            "mqtt://USER:PASSWORD@HOST:1883 with the dynamic security admin "
            f"(mosquitto_ctrl dynsec init ... USER PASSWORD), {HELP}."
        )
    return user


def target() -> MqttTarget:
    try:
        return MqttTarget.parse(settings.MQTT_URL)
    except ValueError as error:
        raise BrokerAccountError(f"MQTT_URL cannot be read ({error}), {HELP}.") from error


def _create_account(account: DeviceAccount) -> list[dict[str, Any]]:
    role = device_role(account.key)
    commands: list[dict[str, Any]] = [
        {"command": "createRole", "rolename": role, "acls": device_acls(account.key)},
        {
            "command": "createClient",
            "username": account.key,
            "clientid": account.key,
            "password": account.secret,
            "roles": [{"rolename": role}],
        },
    ]
    if not account.enabled:
        # createClient's "disabled" flag is ignored by Mosquitto 2.0.11.
        commands.append({"command": "disableClient", "username": account.key})
    return commands


def _delete_account(key: str) -> list[dict[str, Any]]:
    return [
        {"command": "deleteClient", "username": key},
        {"command": "deleteRole", "rolename": device_role(key)},
    ]


def _for_each(
    items: Iterable[Any], make: Callable[[Any], list[dict[str, Any]]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The commands `make` gives for each item (a key or an account), and whom each is about."""
    commands: list[dict[str, Any]] = []
    subjects: list[str] = []
    for item in items:
        made = make(item)
        commands += made
        subjects += [item if isinstance(item, str) else item.key] * len(made)
    return commands, subjects


# --- Talking to the plugin ----------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """The broker's answer to one command; `subject` is who it was about (a key, a role)."""

    command: str
    subject: str
    error: str | None
    data: dict[str, Any]


class ControlChannel:
    """One MQTT connection to the dynamic security plugin's control topic."""

    def __init__(self, timeout: float = TIMEOUT) -> None:
        self.target = target()
        self.user = platform_user()
        self.timeout = timeout
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"iotfleet-accounts-{os.getpid()}-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(self.user, self.target.password or None)
        if self.target.tls:
            self.client.tls_set()
        self.client.connect_timeout = timeout
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.connack: Any = None
        self.suback: Any = None
        self.disconnected = False
        self.answers: dict[str, list[dict[str, Any]]] = {}

    # paho callbacks
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.disconnected = True

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self.suback = reasons[0]

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            responses = json.loads(message.payload)["responses"]
            request = str(responses[0]["correlationData"])
        except (ValueError, KeyError, IndexError, TypeError):
            return  # another client's request, or not an answer at all
        self.answers[request] = responses

    def open(self) -> None:
        where = f"Mosquitto at {self.target.address}"
        try:
            self.client.connect(self.target.host, self.target.port, keepalive=60)
        except OSError as error:
            raise BrokerAccountError(
                f"{where} did not answer ({error}): is it running with the dynamic security "
                f"plugin? Try again once it is up ({HELP})."
            ) from error
        self._wait(lambda: self.connack is not None, "answer the login")
        if self.connack.is_failure:
            raise BrokerAccountError(
                f"{where} refused the platform's login as {self.user!r} ({self.connack}): "
                "MQTT_URL must carry the user and password of the dynamic security admin "
                f"(mosquitto_ctrl dynsec init ... USER PASSWORD), {HELP}."
            )
        self.client.subscribe(RESPONSE_TOPIC, qos=1)
        self._wait(lambda: self.suback is not None, "confirm the subscription to its answers")
        if self.suback.is_failure:
            raise BrokerAccountError(
                f"{where} does not let {self.user!r} read {RESPONSE_TOPIC} ({self.suback}): "
                f"MQTT_URL's user must be the dynamic security admin, {HELP}."
            )

    def close(self) -> None:
        if not self.disconnected:
            self.client.disconnect()
            self.client.loop(timeout=0.05)
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def run(
        self,
        commands: Sequence[dict[str, Any]],
        *,
        subjects: Sequence[str],
        tolerated: Collection[str] = (),
        hint: str | None = None,
        kicked_ok: bool = False,
    ) -> list[Reply]:
        """Send the commands, COMMANDS_PER_MESSAGE to a message, and return the replies.

        A reply with an error not in `tolerated` raises BrokerAccountError. With `kicked_ok`,
        the broker disconnecting this client (it changed the platform user's own roles) ends
        the run quietly with the replies so far.
        """
        replies: list[Reply] = []
        for start in range(0, len(commands), COMMANDS_PER_MESSAGE):
            chunk = commands[start : start + COMMANDS_PER_MESSAGE]
            answers = self._request(chunk, kicked_ok)
            if answers is None:
                return replies
            for offset, (command, answer) in enumerate(zip(chunk, answers, strict=False)):
                reply = Reply(
                    command=command["command"],
                    subject=subjects[start + offset],
                    error=answer.get("error"),
                    data=answer.get("data") or {},
                )
                if reply.error and reply.error not in tolerated:
                    raise BrokerAccountError(
                        f"Mosquitto at {self.target.address} refused {reply.command} for "
                        f"{reply.subject!r}: {reply.error}; "
                        + (hint or f"try again, and if it persists check the broker's log ({HELP})")
                        + "."
                    )
                replies.append(reply)
        return replies

    def _request(self, chunk: Sequence[dict[str, Any]], kicked_ok: bool) -> list | None:
        request = secrets.token_hex(8)
        first, *rest = chunk
        payload = json.dumps({"commands": [{**first, "correlationData": request}, *rest]})
        info = self.client.publish(CONTROL_TOPIC, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            if kicked_ok and self.disconnected:
                return None
            raise BrokerAccountError(
                f"Could not send to Mosquitto at {self.target.address} "
                f"({mqtt.error_string(info.rc)}): try again ({HELP})."
            )
        try:
            self._wait(
                lambda: request in self.answers,
                "answer the dynamic security commands",
                self.timeout + SECONDS_PER_COMMAND * len(chunk),
            )
        except BrokerAccountError:
            if kicked_ok and self.disconnected:
                return None
            raise
        answers = self.answers.pop(request)
        if len(answers) != len(chunk):
            raise BrokerAccountError(
                f"Mosquitto at {self.target.address} answered {len(answers)} of {len(chunk)} "
                f"account commands; check its log ({HELP})."
            )
        return answers

    def _wait(self, done: Callable[[], bool], what: str, timeout: float | None = None) -> None:
        timeout = timeout or self.timeout
        deadline = time.monotonic() + timeout
        while not done():
            if self.disconnected:
                raise BrokerAccountError(
                    f"Mosquitto at {self.target.address} closed the connection while the "
                    f"platform waited for it to {what}: check the user and password in MQTT_URL "
                    f"and the broker's log ({HELP})."
                )
            if time.monotonic() > deadline:
                raise BrokerAccountError(
                    f"Mosquitto at {self.target.address} did not {what} within "
                    f"{timeout:g} s: is it running with the dynamic security plugin (the "
                    f"plugin line in mosquitto.conf)? ({HELP})"
                )
            self.client.loop(timeout=0.05)


@contextmanager
def control_channel(timeout: float = TIMEOUT) -> Iterator[ControlChannel]:
    channel = ControlChannel(timeout)
    try:
        channel.open()
        yield channel
    finally:
        channel.close()
