"""Concurrent writers against PostgreSQL: no lost update, no rollback."""

import random
import threading

import pytest
from django.db import close_old_connections, connection

from devices.models import Device
from iotcloud.testing import device_client, make_operator_client
from twin.services import twin_update_desired

THREADS = 20


def run_in_threads(target, count):
    barrier = threading.Barrier(count)
    results, errors = [None] * count, []

    def worker(n):
        try:
            barrier.wait()
            results[n] = target(n)
        except Exception as exc:  # surfaced below with the thread's number
            errors.append((n, exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    close_old_connections()
    assert not errors, errors
    return results


@pytest.mark.postgres
def test_parallel_patches_of_different_keys_lose_nothing(postgres_only, tenant, make_device):
    device = make_device(tenant)
    api = make_operator_client(tenant, "alice")
    url = f"/customer/devices/{device.device_id}/twin/desired"

    statuses = run_in_threads(lambda n: api.patch(url, {"desired": {f"key_{n}": n}}).status_code, THREADS)

    assert statuses == [200] * THREADS
    device.refresh_from_db()
    assert device.desired_version == THREADS
    assert device.desired_state == {f"key_{n}": n for n in range(THREADS)}


@pytest.mark.postgres
def test_parallel_reports_end_at_the_highest_version(postgres_only, tenant, make_device):
    device = make_device(tenant)
    for n in range(THREADS):
        twin_update_desired(device=device, document={"n": n})
    versions = list(range(1, THREADS + 1))
    random.shuffle(versions)
    api = device_client(device)

    def report(n):
        version = versions[n]
        return api.post("/device/v1/shadow/reported", {"reported": {"v": version}, "version": version}).status_code

    assert run_in_threads(report, THREADS) == [200] * THREADS
    device = Device.objects.get(pk=device.pk)
    assert device.reported_version == THREADS
    # The state belongs to the highest version, whatever order the reports landed in.
    assert device.reported_state == {"v": THREADS}


@pytest.mark.postgres
def test_expected_version_lets_exactly_one_of_many_writers_win(postgres_only, tenant, make_device):
    device = make_device(tenant)
    api = make_operator_client(tenant, "alice")
    url = f"/customer/devices/{device.device_id}/twin/desired"

    statuses = run_in_threads(lambda n: api.put(url, {"desired": {"winner": n}, "expected_version": 0}).status_code, 10)

    assert sorted(statuses) == [200] + [409] * 9
    device.refresh_from_db()
    assert device.desired_version == 1


@pytest.mark.postgres
def test_parallel_partial_reports_and_named_shadow_writes_lose_nothing(postgres_only, tenant, make_device):
    """The engine's merges under row locks: every key of every writer lands, versions count every change."""
    from twin.engine import ShadowChange, shadow_apply
    from twin.models import NamedShadow

    device = make_device(tenant)

    def write(n):
        name = "" if n % 2 else "cfg"  # half on the classic shadow, half on a named one created concurrently
        (result,) = shadow_apply([ShadowChange(tenant.id, device.device_id, name, reported={f"k{n}": n},
                                               by_device=True)])  # fmt: skip
        return result.error

    assert run_in_threads(write, THREADS) == [None] * THREADS
    device.refresh_from_db()
    assert device.reported_state == {f"k{n}": n for n in range(1, THREADS, 2)}
    assert device.shadow_version == THREADS // 2
    named = NamedShadow.objects.get(device=device, name="cfg")
    assert named.reported_state == {f"k{n}": n for n in range(0, THREADS, 2)} and named.shadow_version == THREADS // 2


@pytest.mark.postgres
def test_parallel_versioned_updates_exactly_one_wins(postgres_only, tenant, make_device):
    from twin.engine import ShadowChange, shadow_apply

    device = make_device(tenant)

    def write(n):
        (result,) = shadow_apply([ShadowChange(tenant.id, device.device_id, reported={"winner": n}, version=0,
                                               by_device=True)])  # fmt: skip
        return result.error.code if result.error else "ok"

    outcomes = run_in_threads(write, THREADS)
    assert sorted(outcomes) == ["ok"] + ["version_conflict"] * (THREADS - 1)
    device.refresh_from_db()
    assert device.shadow_version == 1 and device.reported_state == {"winner": outcomes.index("ok")}


@pytest.mark.postgres
def test_parallel_creates_of_one_named_shadow_exactly_one_wins(postgres_only, tenant, make_device):
    from iotcloud.errors import Conflict
    from twin.services import shadow_create

    device = make_device(tenant)

    def create(n):
        try:
            shadow_create(device=device, shadow_name="cfg")
        except Conflict as exc:
            return exc.code
        return "created"

    outcomes = run_in_threads(create, THREADS)
    assert sorted(outcomes) == ["created"] + ["shadow_exists"] * (THREADS - 1)


@pytest.mark.postgres
def test_reports_and_desired_writes_in_parallel_lose_nothing(postgres_only, tenant, make_device):
    """A report locks its row at the token lookup and writes from that read (one transaction); operators'
    desired writes lock the same row in the engine: neither loses the other's change, nothing deadlocks."""
    device = make_device(tenant)
    twin_update_desired(device=device, document={"start": 0})
    operator = make_operator_client(tenant, "alice")
    api = device_client(device)

    def work(n):
        if n % 2:
            return operator.patch(f"/customer/devices/{device.device_id}/twin/desired",
                                  {"desired": {f"key_{n}": n}}).status_code  # fmt: skip
        return api.post("/device/v1/shadow/reported", {"reported": {"r": n}, "version": 1}).status_code

    assert run_in_threads(work, THREADS) == [200] * THREADS
    device = Device.objects.get(pk=device.pk)
    assert device.desired_state == {"start": 0, **{f"key_{n}": n for n in range(1, THREADS, 2)}}
    assert device.desired_version == 1 + THREADS // 2 and device.reported_version == 1
    assert device.reported_state in [{"r": n} for n in range(0, THREADS, 2)]
