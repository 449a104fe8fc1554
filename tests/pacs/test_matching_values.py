"""DA / TM / DT / ranges / wildcards / PN (PS3.5 6.2, PS3.4 C.2.2.2): pure table tests."""

from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest

from pacs.lib.dicom_values import (
    ValueError_,
    is_universal,
    normalize_pn,
    parse_da,
    parse_dt,
    parse_range,
    parse_tm,
    wildcard_to_like,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("20261126", (date(2026, 11, 26), date(2026, 11, 26))),
        ("20261101-20261130", (date(2026, 11, 1), date(2026, 11, 30))),
        ("-20261130", (None, date(2026, 11, 30))),
        ("20261101-", (date(2026, 11, 1), None)),
        ("2026.11.26", (date(2026, 11, 26), date(2026, 11, 26))),
    ],
)
def test_date_ranges(text, expected):
    assert parse_range(text, parse_da) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1030", (time(10, 30), time(10, 30, 59, 999999))),
        ("10", (time(10), time(10, 59, 59, 999999))),
        ("0800-1200", (time(8), time(12, 0, 59, 999999))),
        ("080000-120000", (time(8), time(12, 0, 0, 999999))),
        ("-1200", (None, time(12, 0, 59, 999999))),
        ("0800-", (time(8), None)),
        ("10:30:15", (time(10, 30, 15), time(10, 30, 15, 999999))),
        ("103015.5", (time(10, 30, 15, 500000), time(10, 30, 15, 599999))),
    ],
)
def test_time_ranges(text, expected):
    assert parse_range(text, parse_tm) == expected


def test_datetime_values_and_ranges():
    minus5 = timezone(-timedelta(hours=5))
    assert parse_dt("20261126103000") == datetime(2026, 11, 26, 10, 30, tzinfo=UTC)
    assert parse_dt("2026", upper=True) == datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_dt("202612", upper=True) == datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    # a whole DT with an offset is one value, not a range
    assert parse_range("20261126-0500", parse_dt) == (
        datetime(2026, 11, 26, tzinfo=minus5), datetime(2026, 11, 26, 23, 59, 59, 999999, tzinfo=minus5))
    assert parse_range("202611261000-202611261200", parse_dt) == (
        datetime(2026, 11, 26, 10, tzinfo=UTC), datetime(2026, 11, 26, 12, 0, 59, 999999, tzinfo=UTC))
    assert parse_range("20261126-", parse_dt)[1] is None


@pytest.mark.parametrize("text", ["2026112", "20261326", "20261131", "abc", "-", "20261101-20261130-20261201", ""])
def test_bad_dates_refused(text):
    with pytest.raises(ValueError_):
        parse_range(text, parse_da)


@pytest.mark.parametrize("text", ["25", "1261", "10:3", "1030-11-12", "x"])
def test_bad_times_refused(text):
    with pytest.raises(ValueError_):
        parse_range(text, parse_tm)


@pytest.mark.parametrize(
    "value, like",
    [("DOE*", "DOE%"), ("D?E", "D_E"), ("100%", "100\\%"), ("A_B*", "A\\_B%"), ("a\\b", "a\\\\b"), ("*X*", "%X%")],
)
def test_wildcards_to_like(value, like):
    assert wildcard_to_like(value) == like


@pytest.mark.parametrize("value, universal", [("", True), ("   ", True), ("*", True), ("**", True), ("*A", False)])
def test_universal(value, universal):
    assert is_universal(value) is universal


@pytest.mark.parametrize(
    "value, normal",
    [("DOE^JOHN^^^", "DOE^JOHN"), ("DOE^JOHN ", "DOE^JOHN"), ("DOE^JOHN=ドウ^ジョン", "DOE^JOHN"), ("DOE", "DOE")],
)
def test_person_names(value, normal):
    assert normalize_pn(value) == normal
