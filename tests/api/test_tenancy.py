"""Every API viewset keeps tenants apart: the same checks, run over each case of the harness."""

from __future__ import annotations

import pytest
from django.urls import resolve
from rest_framework.viewsets import ViewSetMixin

from devices.api.tenancy import TenantScopedMixin
from tests.api.clients import client_as, listed, routed_views
from tests.api.tenancy_cases import CASES, WRITABLE_CASES, ApiCase

by_case = pytest.mark.parametrize("case", CASES, ids=str)
by_writable_case = pytest.mark.parametrize("case", WRITABLE_CASES, ids=str)
DETAIL_REQUESTS = [(case, method) for case in CASES for method in case.detail_methods]
WRITE_REQUESTS = [
    (case, method) for case in WRITABLE_CASES for method in ("put", "patch", "delete")
]


def _request_ids(value: object) -> str:
    return str(value)


def api_viewsets() -> set[type]:
    """The viewset classes routed under /api/v1/."""
    return {view for view in routed_views() if issubclass(view, ViewSetMixin)}


def test_every_api_viewset_has_a_tenancy_case():
    routed = api_viewsets()
    assert routed, "no viewset found under /api/v1/: the URL walk is broken"
    missing = {cls.__name__ for cls in routed} - {case.viewset.__name__ for case in CASES}
    assert not missing, f"add a case to tests/api/tenancy_cases.py for: {sorted(missing)}"


def test_every_api_viewset_is_tenant_scoped():
    unscoped = [cls.__name__ for cls in api_viewsets() if not issubclass(cls, TenantScopedMixin)]
    assert not unscoped, f"build these on devices.api.tenancy.TenantScoped*: {unscoped}"


@by_case
def test_each_case_names_a_routed_viewset(case: ApiCase):
    assert resolve(case.list_url()).func.cls is case.viewset


@by_case
def test_alice_lists_acme_rows_and_none_of_globex(case: ApiCase, acme, globex, alice):
    mine, theirs = case.make(acme), case.make(globex)
    seen = listed(client_as(alice).get(case.list_url()), case.lookup_field)
    assert case.lookup(mine) in seen
    assert case.lookup(theirs) not in seen


@by_case
def test_alice_retrieves_an_acme_object(case: ApiCase, acme, alice):
    obj = case.make(acme)
    response = client_as(alice).get(case.detail_url(obj))
    assert response.status_code == 200
    assert response.data[case.lookup_field] == case.lookup(obj)


@pytest.mark.parametrize(("case", "method"), DETAIL_REQUESTS, ids=_request_ids)
def test_carol_of_globex_gets_404_for_an_acme_object_and_nothing_changes(
    case: ApiCase, method: str, acme, carol
):
    obj = case.make(acme)
    before = case.state(obj)
    response = case.request(client_as(carol), method, obj)
    assert response.status_code == 404
    assert case.state(obj) == before


@by_case
def test_bob_the_viewer_lists_and_retrieves(case: ApiCase, acme, bob):
    obj = case.make(acme)
    client = client_as(bob)
    assert case.lookup(obj) in listed(client.get(case.list_url()), case.lookup_field)
    assert client.get(case.detail_url(obj)).status_code == 200


@by_writable_case
def test_bob_the_viewer_cannot_create(case: ApiCase, acme, bob):
    payload = case.create_payload(acme)
    count = case.model.objects.count()
    response = client_as(bob).post(case.list_url(), payload, format=case.create_format)
    assert response.status_code == 403
    assert case.model.objects.count() == count


@pytest.mark.parametrize(("case", "method"), WRITE_REQUESTS, ids=_request_ids)
def test_bob_the_viewer_cannot_change_or_delete(case: ApiCase, method: str, acme, bob):
    obj = case.make(acme)
    before = case.state(obj)
    response = case.request(client_as(bob), method, obj)
    assert response.status_code == 403
    assert case.state(obj) == before


@by_writable_case
def test_alice_creates_in_acme_even_when_the_payload_names_globex(
    case: ApiCase, acme, globex, alice
):
    payload = {**case.create_payload(acme), "tenant": "globex"}
    response = client_as(alice).post(case.list_url(), payload, format=case.create_format)
    assert response.status_code == 201, response.data
    assert response.data["tenant"] == "acme"
    created = case.model.objects.get(**{case.lookup_field: response.data[case.lookup_field]})
    assert created.tenant_id == acme.pk


@by_writable_case
def test_alice_cannot_create_in_globex_with_the_x_tenant_header(case: ApiCase, acme, globex, alice):
    payload = case.create_payload(acme)
    count = case.model.objects.count()
    response = client_as(alice).post(
        case.list_url(), payload, format=case.create_format, headers={"X-Tenant": "globex"}
    )
    assert response.status_code == 403
    assert case.model.objects.count() == count


@pytest.mark.parametrize("method", ["put", "patch"])
@by_writable_case
def test_alice_updates_an_acme_object(case: ApiCase, method: str, acme, alice):
    obj = case.make(acme)
    before = case.state(obj)
    response = case.request(client_as(alice), method, obj)
    assert response.status_code == 200, response.data
    assert response.data["tenant"] == "acme"
    assert case.state(obj) != before


@by_writable_case
def test_alice_deletes_an_acme_object(case: ApiCase, acme, alice):
    obj = case.make(acme)
    response = case.request(client_as(alice), "delete", obj)
    assert response.status_code == 204
    assert case.state(obj) is None


@by_case
def test_an_anonymous_client_cannot_list(case: ApiCase, acme):
    case.make(acme)
    assert client_as(None).get(case.list_url()).status_code in {401, 403}


@pytest.mark.parametrize(("case", "method"), DETAIL_REQUESTS, ids=_request_ids)
def test_an_anonymous_client_cannot_read_or_change_an_object(case: ApiCase, method: str, acme):
    obj = case.make(acme)
    before = case.state(obj)
    response = case.request(client_as(None), method, obj)
    assert response.status_code in {401, 403}
    assert case.state(obj) == before


@by_writable_case
def test_an_anonymous_client_cannot_create(case: ApiCase, acme):
    payload = case.create_payload(acme)
    count = case.model.objects.count()
    response = client_as(None).post(case.list_url(), payload, format=case.create_format)
    assert response.status_code in {401, 403}
    assert case.model.objects.count() == count
