"""Firmware versions are semantic versions (semver.org), compared with the `semver` package.

Releases must carry a valid one; what a device reports is read leniently ("v2.1", "2.1"), and a
version that cannot be read at all is never taken for a downgrade.
"""

from __future__ import annotations

import semver


class VersionError(ValueError):
    pass


def parse_release_version(text: str) -> semver.Version:
    try:
        return semver.Version.parse(text.strip())
    except (ValueError, TypeError) as error:
        raise VersionError(
            f"{text!r} is not a semantic version: use MAJOR.MINOR.PATCH, e.g. 2.1.0 or 2.1.0-rc.1."
        ) from error


def device_version(text: str | None) -> semver.Version | None:
    """What a device runs, or None if it reports nothing readable."""
    text = (text or "").strip().removeprefix("v").removeprefix("V")
    if not text:
        return None
    try:
        return semver.Version.parse(text, optional_minor_and_patch=True)
    except (ValueError, TypeError):
        return None


def is_downgrade(current: str | None, target: str) -> bool:
    """Whether installing `target` on a device running `current` goes back in versions."""
    running = device_version(current)
    return running is not None and parse_release_version(target) < running


def same_version(current: str | None, target: str) -> bool:
    running = device_version(current)
    if running is None:
        return (current or "").strip() == target.strip()
    return running == parse_release_version(target)
