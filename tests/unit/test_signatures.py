"""ingress.signatures: Polar webhook signatures under both schemes (Standard Webhooks key and legacy raw key)."""
from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import standardwebhooks.webhooks as swh
from ingress.signatures import signing_keys, verify
from standardwebhooks import Webhook

NOW = datetime(2026, 3, 10, 15, 0, 0, tzinfo=UTC)
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"x" * 32).decode()
LEGACY_SECRET = "polar_whs_abcde"  # not base64: only the legacy key can be built
BODY = '{"type":"subscription.updated","data":{"id":"sub_1"}}'


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library reads the wall clock for the 5-minute tolerance; pin it to NOW."""
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return NOW.astimezone(tz) if tz else NOW.replace(tzinfo=None)

    monkeypatch.setattr(swh, "datetime", Frozen)


def standard(secret: str) -> Webhook:
    return Webhook(secret)


def legacy(secret: str) -> Webhook:
    return Webhook(secret.encode())


def headers(signature: str, at: datetime = NOW, msg_id: str = "msg_1") -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature}


def signed(key: Webhook, at: datetime = NOW, body: str = BODY, msg_id: str = "msg_1") -> dict[str, str]:
    return headers(key.sign(msg_id, at, body), at, msg_id)


@pytest.mark.parametrize(
    ("secret", "signer", "n_keys"),
    [
        (SECRET, standard, 2),
        (SECRET, legacy, 2),
        (LEGACY_SECRET, legacy, 1),
        ("polar_whs_abc-def", legacy, 2),  # decodes as (garbage) base64, the legacy key still verifies
    ],
)
def test_a_signature_under_either_scheme_is_valid(secret: str, signer: Callable[[str], Webhook],
                                                  n_keys: int) -> None:
    keys = signing_keys(secret)
    assert len(keys) == n_keys
    assert verify(keys, BODY.encode(), signed(signer(secret))) is None


@pytest.mark.parametrize(
    "at", [NOW - timedelta(minutes=5), NOW - timedelta(minutes=4, seconds=59), NOW + timedelta(minutes=5)],
)
def test_a_timestamp_within_five_minutes_either_way_is_accepted(at: datetime) -> None:
    assert verify(signing_keys(SECRET), BODY.encode(), signed(standard(SECRET), at)) is None


def test_header_names_are_case_insensitive() -> None:
    h = {k.title(): v for k, v in signed(standard(SECRET)).items()}
    assert verify(signing_keys(SECRET), BODY.encode(), h) is None


@pytest.mark.parametrize(
    "signature",
    [
        "{wrong} {good}",
        "{good} {wrong}",
        "v2,{b64} {good}",
        "{legacy} {wrong}",
    ],
)
def test_one_valid_signature_among_several_is_enough(signature: str) -> None:
    sig = signature.format(good=standard(SECRET).sign("msg_1", NOW, BODY),
                           legacy=legacy(SECRET).sign("msg_1", NOW, BODY),
                           wrong=standard(OTHER_SECRET).sign("msg_1", NOW, BODY),
                           b64=base64.b64encode(b"z" * 32).decode())
    assert verify(signing_keys(SECRET), BODY.encode(), headers(sig)) is None


@pytest.mark.parametrize(
    ("secret", "body", "hdrs", "reason"),
    [
        (SECRET, BODY.replace("sub_1", "sub_2"), signed(standard(SECRET)), "no matching signature found"),
        (SECRET, BODY + " ", signed(legacy(SECRET)), "no matching signature found"),
        (SECRET, BODY, signed(standard(OTHER_SECRET)), "no matching signature found"),
        (OTHER_SECRET, BODY, signed(legacy(SECRET)), "no matching signature found"),
        (LEGACY_SECRET, BODY, signed(legacy("polar_whs_other")), "no matching signature found"),
        (SECRET, BODY, signed(standard(SECRET), msg_id="msg_2") | {"webhook-id": "msg_1"},
         "no matching signature found"),
        (SECRET, BODY, signed(standard(SECRET), NOW - timedelta(minutes=5, seconds=1)), "message timestamp too old"),
        (SECRET, BODY, signed(standard(SECRET), NOW - timedelta(days=1)), "message timestamp too old"),
        (SECRET, BODY, signed(standard(SECRET), NOW + timedelta(minutes=5, seconds=1)), "message timestamp too new"),
        (SECRET, BODY, signed(standard(SECRET)) | {"webhook-timestamp": "yesterday"}, "invalid signature headers"),
    ],
)
def test_a_bad_signature_or_timestamp_is_refused_with_its_reason(secret: str, body: str, hdrs: dict[str, str],
                                                                 reason: str) -> None:
    assert verify(signing_keys(secret), body.encode(), hdrs) == reason


@pytest.mark.parametrize("signature", ["v1", "garbage", "v1,abc", "v1,a,b"])
def test_a_malformed_signature_header_is_refused(signature: str) -> None:
    assert verify(signing_keys(SECRET), BODY.encode(), headers(signature)) == "malformed signature header"


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_refused(missing: str) -> None:
    h = signed(standard(SECRET))
    del h[missing]
    assert verify(signing_keys(SECRET), BODY.encode(), h) == "missing required headers"


def test_an_empty_header_counts_as_missing() -> None:
    h = signed(standard(SECRET)) | {"webhook-signature": ""}
    assert verify(signing_keys(SECRET), BODY.encode(), h) == "missing required headers"
