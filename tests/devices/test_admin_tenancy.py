"""The admin shows and changes only what the user's tenants and roles allow, over real HTTP."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.urls import reverse
from rest_framework.authtoken.models import Token, TokenProxy

from devices.models import (
    Device,
    DeviceGroup,
    DeviceShadow,
    DeviceStatus,
    DeviceType,
    Membership,
    Role,
    Tenant,
    TenantQuerySet,
)
from devices.services import add_member, update_reported
from tests.devices.conftest import admin_url, device_form
from tests.factories import make_device

ADMIN_INDEX = reverse("admin:index")


@pytest.fixture
def both_fleets(acme_device, globex_device, acme_group, globex_group, alice, bob, carol, dave):
    """Each tenant with a device in a group, a type with a metric, a shadow and members."""
    acme_device.groups.add(acme_group)
    globex_device.groups.add(globex_group)
    Token.objects.create(user=alice)
    Token.objects.create(user=carol)
    return acme_device, globex_device


def result_pks(response) -> set:
    return {row.pk for row in response.context["cl"].result_list}


def rows_of(model, tenant) -> list:
    """The model's rows in `tenant`, through the queryset's own tenant lookup."""
    queryset = model._default_manager.all()
    return list(queryset.filter(**{queryset.tenant_lookup: tenant.pk}))


# --- Reading ------------------------------------------------------------------------------------


def test_a_viewer_sees_her_tenants_devices_and_not_another_tenants(client, bob, both_fleets):
    acme_device, globex_device = both_fleets
    client.force_login(bob)
    response = client.get(admin_url(Device))
    assert response.status_code == 200
    assert result_pks(response) == {acme_device.pk}
    assert acme_device.key in response.text
    assert globex_device.key not in response.text


def test_a_viewer_gets_a_read_only_device_page(client, bob, both_fleets):
    acme_device, _ = both_fleets
    client.force_login(bob)
    response = client.get(admin_url(acme_device, "change"))
    assert response.status_code == 200
    assert response.context["has_change_permission"] is False
    assert acme_device.name in response.text
    assert 'name="name"' not in response.text
    assert 'name="_save"' not in response.text


def test_a_viewer_cannot_change_a_device(client, bob, both_fleets):
    acme_device, _ = both_fleets
    client.force_login(bob)
    response = client.post(
        admin_url(acme_device, "change"),
        device_form(name="Renamed by bob", device_type=acme_device.device_type_id),
    )
    assert response.status_code == 403
    acme_device.refresh_from_db()
    assert acme_device.name == "Freezer 1"


def test_a_viewer_cannot_add_a_device(client, bob, both_fleets):
    client.force_login(bob)
    assert client.get(admin_url(Device, "add")).status_code == 403


def test_a_viewers_changelist_offers_no_actions_and_a_posted_one_changes_nothing(
    client, bob, both_fleets
):
    acme_device, _ = both_fleets
    client.force_login(bob)
    assert client.get(admin_url(Device)).context["action_form"] is None
    client.post(
        admin_url(Device),
        {"action": "put_in_maintenance", "_selected_action": [acme_device.pk]},
    )
    acme_device.refresh_from_db()
    assert acme_device.status == DeviceStatus.OFFLINE


def test_the_device_page_shows_the_shadow_read_only(client, bob, both_fleets):
    acme_device, _ = both_fleets
    update_reported(acme_device, {"setpoint": -18, "door": "closed"})
    client.force_login(bob)
    response = client.get(admin_url(acme_device, "change"))
    assert "&quot;setpoint&quot;: -18" in response.text
    assert "<pre" in response.text
    assert "Version 1" in response.text


# --- Another tenant's operator ------------------------------------------------------------------


def test_another_tenants_operator_cannot_open_a_device(client, carol, both_fleets):
    acme_device, _ = both_fleets
    client.force_login(carol)
    response = client.get(admin_url(acme_device, "change"))
    assert response.status_code == 302
    assert response["Location"] == ADMIN_INDEX
    assert acme_device.name not in client.get(response["Location"]).text


def test_another_tenants_operator_cannot_change_a_device(client, carol, both_fleets):
    acme_device, _ = both_fleets
    client.force_login(carol)
    client.post(
        admin_url(acme_device, "change"),
        device_form(name="Taken over", device_type=acme_device.device_type_id),
    )
    acme_device.refresh_from_db()
    assert acme_device.name == "Freezer 1"


def test_another_tenants_operator_cannot_delete_a_device(client, carol, both_fleets):
    acme_device, _ = both_fleets
    client.force_login(carol)
    assert client.get(admin_url(acme_device, "delete")).status_code == 302
    client.post(admin_url(acme_device, "delete"), {"post": "yes"})
    client.post(
        admin_url(Device),
        {"action": "delete_selected", "_selected_action": [acme_device.pk], "post": "yes"},
    )
    assert Device.objects.filter(pk=acme_device.pk).exists()


@pytest.mark.parametrize(
    ("model", "acme_text"),
    [
        (DeviceGroup, "Warehouse North"),
        (DeviceType, "Freezer"),
        (Membership, "alice"),
        (Tenant, "Acme Cold Chain"),
        (DeviceShadow, "acme-freezer-1"),
    ],
    ids=lambda value: getattr(value, "__name__", value),
)
def test_another_tenants_operator_sees_none_of_its_rows(
    client, carol, both_fleets, acme, model, acme_text
):
    client.force_login(carol)
    response = client.get(admin_url(model))
    assert response.status_code == 200
    assert acme_text not in response.text
    acme_row = rows_of(model, acme)[0]
    assert client.get(admin_url(acme_row, "change"))["Location"] == ADMIN_INDEX


def test_list_filters_never_show_another_tenants_group_or_type_names(
    client, carol, both_fleets, acme, globex
):
    make_device(globex, "globex-pump-2", device_type=both_fleets[1].device_type)
    client.force_login(carol)
    response = client.get(admin_url(Device))
    filters = {spec.title: spec for spec in response.context["cl"].filter_specs}
    group_choices = [
        choice["display"] for choice in filters["groups"].choices(response.context["cl"])
    ]
    assert "Plant A" in group_choices
    assert "Warehouse North" not in response.text
    assert "Freezer" not in response.text
    assert "Acme" not in response.text


def test_filter_choices_name_the_tenant_when_a_user_sees_several(client, olga, both_fleets):
    client.force_login(olga)
    response = client.get(admin_url(Device))
    assert "Acme Cold Chain / Warehouse North" in response.text
    assert "Globex Pumps / Plant A" in response.text


# --- An operator of the tenant ------------------------------------------------------------------


def test_an_operator_can_change_her_tenants_device(client, alice, both_fleets, acme_group):
    acme_device, _ = both_fleets
    client.force_login(alice)
    response = client.post(
        admin_url(acme_device, "change"),
        device_form(
            name="Freezer 1 (dock)",
            device_type=acme_device.device_type_id,
            groups=[acme_group.pk],
            tags="cold, critical",
            attributes='{"rack": 4}',
        ),
    )
    assert response.status_code == 302
    acme_device.refresh_from_db()
    assert acme_device.name == "Freezer 1 (dock)"
    assert acme_device.tags == ["cold", "critical"]
    assert acme_device.attributes == {"rack": 4}


def test_the_key_and_tenant_are_read_only_once_the_device_exists(client, alice, both_fleets):
    acme_device, _ = both_fleets
    client.force_login(alice)
    form = client.get(admin_url(acme_device, "change")).context["adminform"].form
    assert "key" not in form.fields
    assert "tenant" not in form.fields


def test_an_operator_may_only_pick_tenants_she_operates(client, alice, both_fleets, acme, globex):
    add_member(alice, globex, Role.VIEWER)
    client.force_login(alice)
    form = client.get(admin_url(Device, "add")).context["adminform"].form
    assert list(form.fields["tenant"].queryset) == [acme]
    assert form["tenant"].value() == acme.pk


def test_related_choices_are_limited_to_the_users_tenants(client, alice, both_fleets):
    client.force_login(alice)
    form = client.get(admin_url(Device, "add")).context["adminform"].form
    assert [t.name for t in form.fields["device_type"].queryset] == ["Freezer"]
    assert [g.name for g in form.fields["groups"].queryset] == ["Warehouse North"]


def test_adding_a_device_with_another_tenants_device_type_is_refused(
    client, alice, both_fleets, acme, globex_pump_type
):
    client.force_login(alice)
    response = client.post(
        admin_url(Device, "add"),
        device_form(tenant=acme.pk, key="acme-new-1", device_type=globex_pump_type.pk),
    )
    assert response.status_code == 200
    assert "device_type" in response.context["adminform"].form.errors
    assert not Device.objects.filter(key="acme-new-1").exists()


def test_a_member_of_two_tenants_cannot_mix_their_groups(
    client, olga, both_fleets, acme, acme_freezer_type, globex_group
):
    client.force_login(olga)
    response = client.post(
        admin_url(Device, "add"),
        device_form(
            tenant=acme.pk,
            key="acme-mixed-1",
            device_type=acme_freezer_type.pk,
            groups=[globex_group.pk],
        ),
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "Plant A" in str(errors["groups"])
    assert "Acme Cold Chain" in str(errors["groups"])
    assert not Device.objects.filter(key="acme-mixed-1").exists()


def test_a_member_of_two_tenants_cannot_mix_their_device_types(
    client, olga, both_fleets, acme, globex_pump_type
):
    client.force_login(olga)
    response = client.post(
        admin_url(Device, "add"),
        device_form(tenant=acme.pk, key="acme-mixed-2", device_type=globex_pump_type.pk),
    )
    assert "device_type" in response.context["adminform"].form.errors
    assert not Device.objects.filter(key="acme-mixed-2").exists()


def test_an_action_changes_only_devices_of_the_users_tenants(client, alice, both_fleets):
    acme_device, globex_device = both_fleets
    client.force_login(alice)
    client.post(
        admin_url(Device),
        {"action": "put_in_maintenance", "_selected_action": [acme_device.pk, globex_device.pk]},
    )
    acme_device.refresh_from_db()
    globex_device.refresh_from_db()
    assert acme_device.status == DeviceStatus.MAINTENANCE
    assert globex_device.status == DeviceStatus.OFFLINE


def test_an_action_leaves_devices_the_user_may_only_view(client, alice, both_fleets, globex):
    acme_device, globex_device = both_fleets
    add_member(alice, globex, Role.VIEWER)
    client.force_login(alice)
    response = client.post(
        admin_url(Device),
        {"action": "put_in_maintenance", "_selected_action": [acme_device.pk, globex_device.pk]},
        follow=True,
    )
    globex_device.refresh_from_db()
    assert globex_device.status == DeviceStatus.OFFLINE
    notes = [str(m) for m in get_messages(response.wsgi_request)]
    assert any("1 selected device(s) were left alone" in note for note in notes)


def test_renaming_a_group_to_a_taken_name_is_a_form_error(client, alice, both_fleets, acme):
    other = DeviceGroup.objects.create(tenant=acme, name="Warehouse South")
    client.force_login(alice)
    response = client.post(
        admin_url(other, "change"), {"name": "Warehouse North", "description": ""}
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    other.refresh_from_db()
    assert other.name == "Warehouse South"


def test_an_operator_adds_a_device_type_with_its_metrics(client, alice, both_fleets, acme):
    client.force_login(alice)
    response = client.post(
        admin_url(DeviceType, "add"),
        {
            "tenant": acme.pk,
            "name": "Chiller",
            "description": "",
            "heartbeat_timeout": "00:10:00",
            "metrics-TOTAL_FORMS": "1",
            "metrics-INITIAL_FORMS": "0",
            "metrics-0-name": "temperature",
            "metrics-0-unit": "°C",
            "metrics-0-min_value": "-30",
            "metrics-0-max_value": "10",
        },
    )
    assert response.status_code == 302
    chiller = DeviceType.objects.get(tenant=acme, name="Chiller")
    assert list(chiller.metrics.values_list("name", "max_value")) == [("temperature", 10)]


def test_a_viewer_sees_metrics_but_cannot_change_them(client, bob, both_fleets):
    acme_device, _ = both_fleets
    client.force_login(bob)
    response = client.get(admin_url(acme_device.device_type, "change"))
    assert response.status_code == 200
    assert "temperature" in response.text
    assert 'name="metrics-0-name"' not in response.text


# --- Shadows ------------------------------------------------------------------------------------


def test_an_operator_edits_the_desired_state_through_the_service(client, alice, both_fleets):
    acme_device, _ = both_fleets
    update_reported(acme_device, {"setpoint": -18})
    shadow = DeviceShadow.objects.get(device=acme_device)
    client.force_login(alice)
    response = client.post(
        admin_url(shadow, "change"), {"desired": '{"setpoint": -20}', "based_on_version": 1}
    )
    assert response.status_code == 302
    shadow.refresh_from_db()
    assert shadow.desired == {"setpoint": -20}
    assert shadow.delta == {"setpoint": -20}
    assert shadow.version == 2
    assert shadow.desired_updated_at is not None


@pytest.mark.parametrize("desired", ["[1, 2]", '{"a": NaN}', "{not json"])
def test_the_desired_state_must_be_a_json_object(client, alice, both_fleets, desired):
    shadow = DeviceShadow.objects.get(device=both_fleets[0])
    client.force_login(alice)
    response = client.post(admin_url(shadow, "change"), {"desired": desired, "based_on_version": 0})
    assert response.status_code == 200
    assert "desired" in response.context["adminform"].form.errors
    shadow.refresh_from_db()
    assert shadow.version == 0


def test_the_edit_form_carries_the_version_the_operator_saw(client, alice, both_fleets):
    update_reported(both_fleets[0], {"setpoint": -18})
    shadow = DeviceShadow.objects.get(device=both_fleets[0])
    client.force_login(alice)
    form = client.get(admin_url(shadow, "change")).context["adminform"].form
    assert form["based_on_version"].value() == 1


def test_saving_over_a_shadow_that_changed_since_the_page_opened_is_refused(
    client, alice, both_fleets
):
    """Two operators (or an operator and the device) at once: the later save must not silently
    overwrite what it never saw."""
    shadow = DeviceShadow.objects.get(device=both_fleets[0])
    client.force_login(alice)
    update_reported(both_fleets[0], {"setpoint": -18})  # the device reports while alice edits
    response = client.post(
        admin_url(shadow, "change"), {"desired": '{"setpoint": -20}', "based_on_version": 0}
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.non_field_errors()
    assert "changed since you opened this page" in str(errors)
    assert "now 1" in str(errors)
    shadow.refresh_from_db()
    assert shadow.desired == {}
    assert shadow.version == 1


def test_a_viewer_cannot_edit_the_desired_state(client, bob, both_fleets):
    shadow = DeviceShadow.objects.get(device=both_fleets[0])
    client.force_login(bob)
    response = client.post(admin_url(shadow, "change"), {"desired": '{"setpoint": -20}'})
    assert response.status_code == 403
    shadow.refresh_from_db()
    assert shadow.desired == {}


# --- Tenants and memberships --------------------------------------------------------------------


def test_a_tenant_admin_renames_the_tenant_but_not_its_slug(client, dave, both_fleets, acme):
    client.force_login(dave)
    response = client.post(admin_url(acme, "change"), {"name": "Acme Frozen", "slug": "hijack"})
    assert response.status_code == 302
    acme.refresh_from_db()
    assert (acme.name, acme.slug) == ("Acme Frozen", "acme")


def test_an_operator_cannot_rename_the_tenant(client, alice, both_fleets, acme):
    client.force_login(alice)
    response = client.post(admin_url(acme, "change"), {"name": "Acme Frozen"})
    assert response.status_code == 403
    acme.refresh_from_db()
    assert acme.name == "Acme Cold Chain"


def test_only_superusers_add_or_delete_tenants(client, dave, root, both_fleets, acme):
    client.force_login(dave)
    assert client.get(admin_url(Tenant, "add")).status_code == 403
    assert client.post(admin_url(acme, "delete"), {"post": "yes"}).status_code == 403
    client.force_login(root)
    response = client.post(admin_url(Tenant, "add"), {"name": "Initech", "slug": "initech"})
    assert response.status_code == 302
    assert Tenant.objects.filter(slug="initech").exists()


def test_a_tenant_admin_adds_a_member_by_username(client, dave, both_fleets, acme):
    erin = get_user_model().objects.create_user("erin", "erin@example.com", "pw-erin")
    client.force_login(dave)
    response = client.post(
        admin_url(Membership, "add"), {"user": "erin", "tenant": acme.pk, "role": "operator"}
    )
    assert response.status_code == 302
    assert Membership.objects.get(user=erin, tenant=acme).role == Role.OPERATOR
    erin.refresh_from_db()
    assert erin.is_staff


def test_an_unknown_username_is_a_form_error(client, dave, both_fleets, acme):
    client.force_login(dave)
    response = client.post(
        admin_url(Membership, "add"), {"user": "nobody", "tenant": acme.pk, "role": "viewer"}
    )
    assert "No active user is called “nobody”" in response.text


def test_a_tenant_admin_cannot_add_members_to_another_tenant(client, dave, both_fleets, globex):
    get_user_model().objects.create_user("erin", "erin@example.com", "pw-erin")
    client.force_login(dave)
    response = client.post(
        admin_url(Membership, "add"), {"user": "erin", "tenant": globex.pk, "role": "admin"}
    )
    assert response.status_code == 200
    assert not Membership.objects.filter(tenant=globex, user__username="erin").exists()


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_operators_and_viewers_only_view_memberships(client, request, both_fleets, user):
    member = request.getfixturevalue(user)
    membership = Membership.objects.get(user__username="dave")
    client.force_login(member)
    assert client.get(admin_url(Membership)).status_code == 200
    assert client.get(admin_url(Membership, "add")).status_code == 403
    response = client.post(admin_url(membership, "change"), {"role": "viewer"})
    assert response.status_code == 403
    assert client.post(admin_url(membership, "delete"), {"post": "yes"}).status_code == 403
    membership.refresh_from_db()
    assert membership.role == Role.ADMIN


# --- API tokens ---------------------------------------------------------------------------------


def test_a_member_sees_only_her_own_api_token(client, carol, alice, both_fleets):
    client.force_login(carol)
    response = client.get(admin_url(TokenProxy))
    assert response.status_code == 200
    assert {token.user_id for token in response.context["cl"].result_list} == {carol.pk}
    assert Token.objects.get(user=alice).key not in response.text
    alices = reverse("admin:authtoken_tokenproxy_change", args=[alice.pk])
    assert client.get(alices)["Location"] == ADMIN_INDEX


def test_a_member_creates_a_token_for_herself_only(client, bob, alice, both_fleets):
    client.force_login(bob)
    response = client.post(admin_url(TokenProxy, "add"), {"user": alice.pk})
    assert response.status_code == 302
    assert Token.objects.filter(user=bob).exists()
    assert Token.objects.filter(user=alice).count() == 1
    key = Token.objects.get(user=bob).key
    assert key not in " ".join(str(m) for m in get_messages(response.wsgi_request))
    assert client.get(admin_url(TokenProxy, "add")).status_code == 403


def test_a_member_deletes_her_own_token_but_not_anothers(client, carol, alice, both_fleets):
    client.force_login(carol)
    alices = reverse("admin:authtoken_tokenproxy_delete", args=[alice.pk])
    client.post(alices, {"post": "yes"})
    assert Token.objects.filter(user=alice).exists()
    key = Token.objects.get(user=carol).key
    own = reverse("admin:authtoken_tokenproxy_delete", args=[carol.pk])
    assert client.post(own, {"post": "yes"}).status_code == 302
    assert not Token.objects.filter(user=carol).exists()
    assert not LogEntry.objects.filter(object_repr__contains=key).exists()
    assert LogEntry.objects.filter(object_repr="API token of carol").exists()


def test_a_superuser_sees_every_tenants_rows(client, root, both_fleets):
    client.force_login(root)
    response = client.get(admin_url(Device))
    assert result_pks(response) == {device.pk for device in both_fleets}
    assert client.get(admin_url(TokenProxy)).context["cl"].result_count == 2


# --- Every registered admin ---------------------------------------------------------------------

# Admins that are neither tenant-scoped nor superuser-only, with the field naming each row's owner.
PER_USER_ADMINS = {TokenProxy: "user"}


def _is_tenant_scoped(model) -> bool:
    return isinstance(model._default_manager.all(), TenantQuerySet)


def test_every_registered_admin_hides_acme_from_globex(client, carol, alice, acme, both_fleets):
    """Fails when an admin is registered without tenant scoping (or superuser-only access)."""
    client.force_login(carol)
    checked_tenant_models = set()
    for model, model_admin in admin.site._registry.items():
        name = f"{model._meta.app_label}.{model.__name__}"
        response = client.get(admin_url(model))
        if _is_tenant_scoped(model):
            assert response.status_code in (200, 403), name
            if response.status_code == 403:
                continue
            acme_rows = rows_of(model, acme)
            if model._meta.app_label == "devices":
                assert acme_rows, f"the fixture should give Acme some {name} rows"
            leaked = result_pks(response) & {row.pk for row in acme_rows}
            assert not leaked, f"carol sees Acme's {name} rows {leaked}"
            for row in acme_rows[:3]:
                assert client.get(admin_url(row, "change")).status_code == 302, name
            checked_tenant_models.add(model)
        elif model in PER_USER_ADMINS:
            assert response.status_code == 200, name
            owners = {
                getattr(row, f"{PER_USER_ADMINS[model]}_id")
                for row in response.context["cl"].result_list
            }
            assert owners <= {carol.pk}, f"carol sees other users' {name} rows"
        else:
            request = response.wsgi_request
            assert response.status_code == 403, f"{name} is shown to a non-superuser"
            assert not model_admin.has_module_permission(request), name
    assert {Tenant, Membership, DeviceType, DeviceGroup, Device, DeviceShadow} <= (
        checked_tenant_models
    )


def test_the_index_lists_no_superuser_only_apps_to_members(client, carol, both_fleets):
    client.force_login(carol)
    apps = {app["app_label"] for app in client.get(ADMIN_INDEX).context["app_list"]}
    assert "devices" in apps
    assert "auth" not in apps
    assert "django_celery_beat" not in apps
