"""The pure rules of enrollment: codes, keyed hashes, lock back-off, and its KPIs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from models.enrollment import (
    CODE_DIGITS,
    LOCK_BASE,
    LOCK_MAX,
    address_key,
    code_digest,
    lock_duration,
    new_code,
    new_enrollment_id,
)
from models.kpis import EnrollmentFact, compute_enrollment_kpis, percentile

KEY = b"k" * 32


def test_codes_are_six_digits_with_leading_zeros_kept_and_vary() -> None:
    codes = {new_code() for _ in range(2000)}
    assert all(len(c) == CODE_DIGITS and c.isdigit() for c in codes)
    assert len(codes) > 1900  # 2000 draws from 10^6: collisions are rare
    assert any(c.startswith("0") for c in codes)


def test_a_code_digest_is_keyed_and_bound_to_its_enrollment() -> None:
    d = code_digest(KEY, "enr_a", "123456")
    assert len(d) == 64 and "123456" not in d
    assert code_digest(KEY, "enr_a", " 123456 ") == d  # pasted with spaces
    assert code_digest(KEY, "enr_b", "123456") != d
    assert code_digest(b"x" * 32, "enr_a", "123456") != d


def test_an_address_key_ignores_case_and_is_per_tenant() -> None:
    a = address_key(KEY, "default", "Ada@Example.com ")
    assert a == address_key(KEY, "default", "ada@example.com")
    assert a != address_key(KEY, "other", "ada@example.com")
    assert "ada" not in a


def test_enrollment_ids_are_random_and_prefixed() -> None:
    ids = {new_enrollment_id() for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("enr_") and len(i) == 30 for i in ids)


def test_the_lock_doubles_with_each_killed_code_up_to_a_day() -> None:
    assert lock_duration(0) == timedelta(0)
    assert [lock_duration(k) for k in (1, 2, 3)] == [LOCK_BASE, LOCK_BASE * 2, LOCK_BASE * 4]
    assert lock_duration(10) == LOCK_MAX
    assert lock_duration(10_000) == LOCK_MAX


def test_enrollment_kpis_from_facts() -> None:
    t0 = datetime(2026, 12, 1, 9, tzinfo=UTC)
    facts = [
        EnrollmentFact(
            channel="web",
            plan_id="pro",
            status="enrolled",
            started_at=t0,
            enrolled_at=t0 + timedelta(seconds=60),
        ),
        EnrollmentFact(
            channel="web",
            plan_id="basic",
            status="enrolled",
            started_at=t0,
            enrolled_at=t0 + timedelta(seconds=120),
        ),
        EnrollmentFact(channel="cli", plan_id="pro", status="expired", started_at=t0),
        EnrollmentFact(channel="web", plan_id="pro", status="awaiting_payment", started_at=t0),
    ]
    k = compute_enrollment_kpis(facts, codes_wrong=1, codes_verified=3)
    assert (k.started, k.enrolled, k.expired) == (4, 2, 1)
    assert k.conversion == 0.5
    assert k.conversion_by_channel["web"].rate == round(2 / 3, 6)
    assert k.conversion_by_channel["cli"].rate == 0.0
    assert k.conversion_by_plan["pro"].enrolled == 1
    assert (k.ttv_p50_s, k.ttv_p95_s) == (90.0, 117.0)
    assert k.verification_failure_rate == 0.25


def test_kpis_of_nothing_are_none_not_zero() -> None:
    k = compute_enrollment_kpis([], 0, 0)
    assert k.conversion is None and k.ttv_p50_s is None and k.verification_failure_rate is None
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
