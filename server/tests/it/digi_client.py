"""Digi's own Python client (devicecloud, from PyPI) against meterstream's legacy services.

Run by the `legacy::digis_python_library_works_with_a_new_base_url` test as
`python digi_client.py <base url> <user> <password> <api key id> <api key secret>`. Nothing but the base URL and the
credentials differ from a script written for Digi Device Cloud. Every step checks values;
any mismatch raises, and the script exits non-zero. On success it prints one JSON line of
what it wrote, for the Rust test to check through the v1 API.
"""

import datetime
import json
import sys

from devicecloud import DeviceCloud
from devicecloud.streams import (
    DataPoint,
    NoSuchStreamException,
    STREAM_TYPE_DOUBLE,
    STREAM_TYPE_INTEGER,
)

base, user, password, key_id, key_secret = sys.argv[1:6]
dc = DeviceCloud(user, password, base_url=base)
UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 1, 5, 0, 0, 0, tzinfo=UTC)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


# Credentials: checked the way the library does it (GET /ws/DeviceCore?size=1).
check(dc.has_valid_credentials(), "valid credentials")
check(not DeviceCloud(user, password + "x", base_url=base).has_valid_credentials(),
      "a wrong password is not valid")

# Create streams.
volt = dc.streams.create_stream(
    "dev1/pst04/voltage", STREAM_TYPE_DOUBLE, description="L1 voltage",
    data_ttl=86400, rollup_ttl=864000, units="V")
count = dc.streams.create_stream("dev1/pst04/count", STREAM_TYPE_INTEGER, units="pulses")
check(volt.get_data_type() == "DOUBLE", "data type")
check(volt.get_units() == "V", "units")
check(volt.get_description() == "L1 voltage", "description")
check(volt.get_data_ttl() == 86400 and volt.get_rollup_ttl() == 864000, "ttls")
check(volt.get_current_value() is None, "a new stream has no current value")

# A single point with every field.
volt.write(DataPoint(data=230.5, timestamp=T0, quality=3, location=(47.3, 8.5, 400.0),
                     description="first"))
# Bulk points into one stream: 600 more, which the client posts in chunks of 250.
values = [230.5] + [220.0 + (i % 20) for i in range(1, 601)]
volt.bulk_write_datapoints([
    DataPoint(data=values[i], timestamp=T0 + datetime.timedelta(seconds=10 * i))
    for i in range(1, 601)
])
# Bulk points across streams through /ws/DataPoint: 200 integers, exactly two pages of 100.
dc.streams.bulk_write_datapoints([
    DataPoint(stream_id="dev1/pst04/count", data=i, data_type=STREAM_TYPE_INTEGER,
              timestamp=T0 + datetime.timedelta(seconds=i))
    for i in range(200)
])

# History with paging, oldest first.
got = list(volt.read(newest_first=False, page_size=100))
check(len(got) == 601, "601 points read back, got %d" % len(got))
check([p.get_data() for p in got] == values, "values in order")
check(got[0].get_timestamp() == T0, "timestamp %r" % got[0].get_timestamp())
check(got[0].get_quality() == 3, "quality %r" % got[0].get_quality())
check(tuple(got[0].get_location()) == (47.3, 8.5, 400.0), "location %r" % (got[0].get_location(),))
check(got[0].get_description() == "first", "description")
check(got[1].get_quality() is None and got[1].get_location() is None,
      "unset quality and location are left out")
check(got[0].get_id() and got[0].get_server_timestamp() is not None, "id and server time")
# Newest first, and the integer stream: 200 points are exactly two full pages, so the client
# asks a third time with the last cursor and must get an empty page.
newest = list(volt.read(newest_first=True, page_size=250))
check([p.get_data() for p in newest] == values[::-1], "newest first")
ints = list(count.read(newest_first=False, page_size=100))
check([p.get_data() for p in ints] == list(range(200)), "integers read back as int()")
check(all(type(p.get_data()) is int for p in ints), "INTEGER data are integers")
# A time window.
window = list(volt.read(start_time=T0 + datetime.timedelta(seconds=100),
                        end_time=T0 + datetime.timedelta(seconds=200), newest_first=False))
check([p.get_data() for p in window] == values[10:20], "window %r" % [p.get_data() for p in window])

# Rollups: hourly averages, checked against the values written.
roll = list(volt.read(rollup_interval="hour", rollup_method="average", newest_first=False))
expected = {}
for i, v in enumerate(values):
    expected.setdefault((10 * i) // 3600, []).append(v)
check(len(roll) == len(expected), "rollup intervals %d" % len(roll))
for p, (h, vs) in zip(roll, sorted(expected.items())):
    check(p.get_timestamp() == T0 + datetime.timedelta(hours=h), "rollup time")
    check(abs(p.get_data() - sum(vs) / len(vs)) < 1e-9, "rollup average")
counts = list(count.read(rollup_interval="day", rollup_method="count"))
check([p.get_data() for p in counts] == [200], "count rollup %r" % [p.get_data() for p in counts])

# The device that wrote them, through DeviceCore.
devices = list(dc.devicecore.get_devices())
check([d.get_connectware_id() for d in devices] == ["dev1"], "devices %r" % devices)
check(devices[0].is_connected(), "dev1 is connected")

# Streams under a prefix, one stream, a missing one.
listed = sorted(s.get_stream_id() for s in dc.streams.get_streams("dev1"))
check(listed == ["dev1/pst04/count", "dev1/pst04/voltage"], "prefix listing %r" % listed)
check(len(list(dc.streams.get_streams())) == 2, "all streams")
check(dc.streams.get_stream_if_exists("dev1/pst04/nope") is None, "missing stream is None")
cur = volt.get_current_value()
check(cur.get_data() == values[-1], "current value")

# Digi's API-key credentials (X-API-KEY-ID/X-API-KEY-SECRET) work too; this key only reads.
by_key = DeviceCloud(api_key_id=key_id, api_key_secret=key_secret, base_url=base)
check(by_key.has_valid_credentials(), "API key credentials")
check(len(list(by_key.streams.get_stream("dev1/pst04/voltage").read(page_size=1000))) == 601,
      "read with an API key")
check(not DeviceCloud(api_key_id=key_id, api_key_secret=key_secret + "x",
                      base_url=base).has_valid_credentials(), "a wrong API key secret")

# Deletes: one point by id, then a range, then the stream.
volt.delete_datapoint(got[5])
left = [p.get_data() for p in volt.read(newest_first=False)]
check(len(left) == 600 and left == values[:5] + values[6:], "one point deleted")
volt.delete_datapoints_in_time_range(T0 + datetime.timedelta(seconds=5000),
                                     T0 + datetime.timedelta(seconds=6000))
left = list(volt.read(newest_first=False))
check(len(left) == 500, "range deleted, %d left" % len(left))
count.delete()
check(dc.streams.get_stream_if_exists("dev1/pst04/count") is None, "stream deleted")
try:
    count.delete()
    raise AssertionError("deleting a deleted stream must fail")
except NoSuchStreamException:
    pass

print(json.dumps({"voltage_points": len(left), "first": values[0]}))
