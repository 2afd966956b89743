"""CSV import of devices: every row checked first, problems reported by line, all or nothing."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from devices.credentials import verify_secret
from devices.device_import import import_devices
from devices.models import Device, DeviceShadow
from tests.devices.conftest import admin_url
from tests.factories import make_device, make_device_type, make_group

HEADER = "key,name,device_type,groups,tags,firmware_version,location,latitude,longitude,attributes"


def csv_file(*lines: str, encoding: str = "utf-8", name: str = "devices.csv") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, ("\n".join(lines) + "\n").encode(encoding), "text/csv")


@pytest.fixture
def acme_setup(acme, acme_freezer_type, acme_group):
    make_device_type(acme, "Chiller")
    make_group(acme, "Dock")
    return acme


def lines_of(result) -> list[int | None]:
    return [line for line, _ in result.errors]


def test_a_good_file_imports_every_row_with_groups_tags_and_attributes(acme_setup):
    result = import_devices(
        acme_setup,
        csv_file(
            HEADER,
            "acme-f-1,Freezer 1,Freezer,Warehouse North;Dock,cold;critical,2.1.0,Dock 1,"
            '52.37,4.89,"{""rack"": 4}"',
            "acme-f-2,Freezer 2,Chiller,,,,,,,",
            "",
            "acme-f-3,Freezer 3,Freezer,Dock, cold ; ,,,-33.9,18.4,{}",
        ),
    )
    assert result.errors == []
    assert [c.device.key for c in result.created] == ["acme-f-1", "acme-f-2", "acme-f-3"]
    first = Device.objects.get(key="acme-f-1")
    assert sorted(first.groups.values_list("name", flat=True)) == ["Dock", "Warehouse North"]
    assert first.tags == ["cold", "critical"]
    assert first.attributes == {"rack": 4}
    assert (first.firmware_version, first.location) == ("2.1.0", "Dock 1")
    assert (first.latitude, first.longitude) == (52.37, 4.89)
    assert Device.objects.get(key="acme-f-2").device_type.name == "Chiller"
    assert Device.objects.get(key="acme-f-3").tags == ["cold"]
    for credential in result.created:
        device = Device.objects.get(pk=credential.device.pk)
        assert verify_secret(credential.secret, device.credential_hash)
        assert DeviceShadow.objects.filter(device=device).exists()


def test_only_the_required_columns_may_be_given_in_any_order_with_a_bom(acme_setup):
    upload = SimpleUploadedFile(
        "devices.csv", "\ufeffName,KEY,device_type\r\nFreezer 7,acme-f-7,Freezer\r\n".encode()
    )
    result = import_devices(acme_setup, upload)
    assert result.ok
    assert Device.objects.get(key="acme-f-7").name == "Freezer 7"


def test_a_file_with_bad_rows_reports_each_by_line_and_imports_nothing(acme_setup):
    result = import_devices(
        acme_setup,
        csv_file(
            HEADER,
            "acme-ok-1,Fine,Freezer,,,,,,,",  # line 2: good
            ",No key,Freezer,,,,,,,",  # line 3: key missing
            "has/slash,Bad key,Freezer,,,,,,,",  # line 4: key format
            "acme-ok-5,,Freezer,,,,,,,",  # line 5: name missing
            "acme-ok-6,Lat,Freezer,,,,,north,,",  # line 6: latitude not a number
            "acme-ok-7,Range,Freezer,,,,,95,,",  # line 7: latitude out of range
            "acme-ok-8,Json,Freezer,,,,,,,{not json}",  # line 8: bad JSON
            "acme-ok-9,List,Freezer,,,,,,,[1]",  # line 9: JSON but not an object
            "acme-ok-10,Short,Freezer",  # line 10: too few values
            '"acme-ok-11","Multi',  # lines 11-12: one record over two lines
            'line name",Nope,,,,,,,',  # ...with an unknown device type
            "acme-ok-13,Nan,Freezer,,,,,nan,,",  # line 13: NaN is not a number
        ),
    )
    assert lines_of(result) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 13]
    messages = dict(result.errors)
    assert "key is empty" in messages[3]
    assert "Use up to 64 letters" in messages[4]
    assert "name is empty" in messages[5]
    assert "latitude “north” is not a number" in messages[6]
    assert "Latitude lies between -90 and 90" in messages[7]
    assert "attributes is not valid JSON" in messages[8]
    assert "must be a JSON object" in messages[9]
    assert "has 3 values but the header has 10 columns" in messages[10]
    assert "unknown device type “Nope”" in messages[11]
    assert "use one of Chiller, Freezer" in messages[11]
    assert "latitude “nan” is not a number" in messages[13]
    assert result.error_messages()[0].startswith("line 3: key is empty")
    assert result.created == []
    assert not Device.objects.exists()


def test_another_tenants_type_and_group_names_are_unknown(
    acme_setup, globex_pump_type, globex_group
):
    result = import_devices(
        acme_setup,
        csv_file(
            "key,name,device_type,groups",
            "acme-p-1,Pump,Pump,",
            "acme-p-2,Pump 2,Freezer,Plant A;Dock",
        ),
    )
    assert lines_of(result) == [2, 3]
    assert "unknown device type “Pump” in Acme Cold Chain" in result.errors[0][1]
    assert "unknown group(s) “Plant A” in Acme Cold Chain" in result.errors[1][1]
    assert not Device.objects.filter(key__startswith="acme-p-").exists()


def test_duplicate_keys_within_the_file_and_against_the_database(acme_setup, globex_device):
    result = import_devices(
        acme_setup,
        csv_file(
            "key,name,device_type",
            "acme-d-1,One,Freezer",
            f"{globex_device.key},Taken,Freezer",
            "acme-d-1,Again,Freezer",
            "acme-d-1,Thrice,Freezer",
        ),
    )
    assert lines_of(result) == [3, 4, 5]
    messages = dict(result.errors)
    assert f"a device with key “{globex_device.key}” already exists" in messages[3]
    assert "key “acme-d-1” is also on line 2" in messages[4]
    assert "key “acme-d-1” is also on line 2" in messages[5]
    assert not Device.objects.filter(key="acme-d-1").exists()


def test_a_file_over_the_byte_limit_is_refused(acme_setup, settings):
    settings.DEVICE_IMPORT_MAX_BYTES = 100
    result = import_devices(
        acme_setup,
        csv_file("key,name,device_type", *(f"acme-b-{n},Big {n},Freezer" for n in range(10))),
    )
    assert result.errors == [
        (
            None,
            "The file is larger than 100\xa0bytes: split it into smaller files and import them "
            "one after another.",
        )
    ]
    assert not Device.objects.exists()


def test_a_file_over_the_row_limit_is_refused(acme_setup, settings):
    settings.DEVICE_IMPORT_MAX_ROWS = 2
    result = import_devices(
        acme_setup,
        csv_file("key,name,device_type", *(f"acme-r-{n},Row {n},Freezer" for n in range(3))),
    )
    assert lines_of(result) == [None]
    assert "more than 2 devices" in result.errors[0][1]
    assert not Device.objects.exists()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("acme-h-1,Freezer,Freezer", "is not a header"),
        ("key,name", "lacks the column(s) device_type"),
        ("key,name,device_type,colour", "unknown column(s) colour"),
        ("key,name,device_type,name", "name appear more than once"),
    ],
)
def test_a_wrong_header_is_reported_on_line_1(acme_setup, header, expected):
    result = import_devices(acme_setup, csv_file(header, "acme-h-2,Freezer,Freezer"))
    assert lines_of(result) == [1]
    assert expected in result.errors[0][1]
    assert not Device.objects.exists()


def test_a_file_that_is_not_utf8_is_reported_with_its_line(acme_setup):
    result = import_devices(
        acme_setup, csv_file("key,name,device_type", "acme-l-1,Kühler,Freezer", encoding="latin-1")
    )
    assert lines_of(result) == [2]
    assert "save the file as “CSV UTF-8”" in result.errors[0][1]


@pytest.mark.parametrize("content", [b"", b"key,name,device_type\n\n"])
def test_an_empty_file_or_one_without_devices_is_refused(acme_setup, content):
    result = import_devices(acme_setup, SimpleUploadedFile("devices.csv", content))
    assert len(result.errors) == 1
    assert not result.created


# --- Through the admin --------------------------------------------------------------------------


def test_an_operator_imports_through_the_admin_and_sees_the_secrets_once(client, alice, acme_setup):
    client.force_login(alice)
    page = client.get(admin_url(Device, "import"))
    assert page.status_code == 200
    assert page.context["form"]["tenant"].value() == acme_setup.pk
    response = client.post(
        admin_url(Device, "import"),
        {"tenant": acme_setup.pk, "file": csv_file("key,name,device_type", "acme-w-1,W1,Freezer")},
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    [credential] = response.context["credentials"]
    assert credential.secret in response.text
    device = Device.objects.get(key="acme-w-1")
    assert verify_secret(credential.secret, device.credential_hash)


def test_the_admin_lists_every_bad_line_and_imports_nothing(client, alice, acme_setup):
    client.force_login(alice)
    response = client.post(
        admin_url(Device, "import"),
        {
            "tenant": acme_setup.pk,
            "file": csv_file("key,name,device_type", "acme-x-1,X1,Freezer", "acme-x-2,,Nope"),
        },
    )
    assert response.status_code == 200
    assert "Nothing was imported" in response.text
    assert "line 3: name is empty" in response.text
    assert "line 3: unknown device type “Nope”" in response.text
    assert not Device.objects.filter(key__startswith="acme-x-").exists()


def test_nobody_imports_into_a_tenant_they_do_not_operate(client, carol, bob, acme_setup):
    upload = csv_file("key,name,device_type", "acme-y-1,Y1,Freezer")
    client.force_login(carol)
    response = client.post(admin_url(Device, "import"), {"tenant": acme_setup.pk, "file": upload})
    assert response.status_code == 200
    assert "tenant" in response.context["form"].errors
    client.force_login(bob)
    upload.seek(0)
    response = client.post(admin_url(Device, "import"), {"tenant": acme_setup.pk, "file": upload})
    assert response.status_code == 403
    assert not Device.objects.filter(key="acme-y-1").exists()


def test_an_existing_device_is_untouched_by_a_failed_import(acme_setup):
    existing = make_device(acme_setup, "acme-keep-1", name="Keep")
    result = import_devices(
        acme_setup, csv_file("key,name,device_type", "acme-keep-1,Replaced,Freezer")
    )
    assert not result.ok
    existing.refresh_from_db()
    assert existing.name == "Keep"
