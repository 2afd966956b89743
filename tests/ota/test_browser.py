"""The rollout wizard driven in headless Chromium against the real platform: an operator creates
a rollout in the wizard (seeing the waves previewed), starts it from its page after the
confirmation, and watches the progress bars move as simulated devices update — pushed through
Channels, with no reload. Screenshots land in artifacts/screenshots/."""

from __future__ import annotations

import time

from django.test import Client

from devices.models import Device, DeviceStatus
from ota.models import Rollout, RolloutStatus
from tests.browser import save_screenshot
from tests.ota.conftest import make_fleet

DEVICES = 12


def log_in(context, base: str, user) -> None:
    client = Client()
    client.force_login(user)
    context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base}]
    )


def succeeded_on_page(page) -> int:
    return int(page.inner_text('#progress-overall tr[data-state="succeeded"] td[data-count]'))


def test_an_operator_creates_starts_and_watches_a_rollout_live(
    stack, browser_context, acme, alice, make_release
):
    make_fleet(acme, DEVICES, online=False)
    release = make_release()
    stack.start_platform()
    stack.start_simulator("--ota-delay", "2:4", "--ota-reboot", "1:2")
    stack.wait_until(
        "the devices online",
        lambda: Device.objects.filter(status=DeviceStatus.ONLINE).count() == DEVICES,
    )
    stack.start_beat()
    log_in(browser_context, stack.base, alice)
    page = browser_context.new_page()
    page.set_default_timeout(30_000)

    # The wizard, step by step, with the waves previewed as the form changes.
    page.goto(f"{stack.base}/ota/rollouts/new/?release={release.pk}")
    page.fill("#id_name", "Spring update")
    page.click("text=Next: waves")
    page.fill("#id_wave_plan", "25, 100")
    page.fill("#id_soak_minutes", "0")
    page.fill("#id_success_threshold", "90")
    page.fill("#id_max_concurrent", "3")
    page.click("text=Next: review")
    page.wait_for_function("document.querySelectorAll('#preview-waves tr[data-wave]').length === 2")
    assert page.inner_text('#preview-waves tr[data-wave="1"] td[data-size]') == "3"
    assert page.inner_text('#preview-waves tr[data-wave="2"] td[data-size]') == "9"
    save_screenshot(page, "ota-wizard-review")
    page.click("#create-rollout")
    page.wait_for_url("**/ota/rollouts/*/")
    rollout = Rollout.objects.get(name="Spring update")
    assert rollout.status == RolloutStatus.DRAFT

    # Start, after reading what it will do.
    page.click('a[data-action="start"]')
    assert "Wave 1's 3 devices are sent the job now" in page.inner_text("#explanation")
    page.click("#confirm-action")
    page.wait_for_url(f"**/ota/rollouts/{rollout.pk}/")
    page.wait_for_function("document.documentElement.dataset.live === 'connected'")
    page.evaluate("window.__sameDocument = true")

    # The bars move as the devices report, with no reload.
    seen = [succeeded_on_page(page)]
    deadline = time.monotonic() + 150
    while seen[-1] < DEVICES and time.monotonic() < deadline:
        time.sleep(0.5)
        now = succeeded_on_page(page)
        if now != seen[-1]:
            seen.append(now)
            if len(seen) == 3:
                save_screenshot(page, "ota-rollout-progress")
    assert seen[-1] == DEVICES, f"progress seen on the page: {seen}\n{stack.logs()}"
    assert len(seen) >= 3, f"the bars should move in steps: {seen}"
    assert seen == sorted(seen)
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    width = page.get_attribute("#progress-overall .bar span.succeeded", "style")
    assert "width: 100.00%" in width
    page.wait_for_function(
        "document.querySelector('#progress-waves tr[data-wave=\"2\"] td[data-succeeded]')"
        ".innerText.startsWith('9 / 9')"
    )
    save_screenshot(page, "ota-rollout-done")
    stack.wait_until(
        "the rollout completed",
        lambda: Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.COMPLETED,
    )
