"""The one error table every vendor adapter shares (tools/vendors/classify.py)."""

from __future__ import annotations

import pytest

from tools.errors import (
    AuthError,
    ContentRejected,
    QuotaError,
    Throttled,
    VendorError,
    VendorFault,
    VendorRejected,
    VendorTimeout,
)
from tools.vendors.classify import Answer, Dialect, classify

PLAIN = Dialect()
VENDOR = Dialect(
    codes={"Throttling": Throttled, "InternalError": VendorFault, "Arrearage": QuotaError},
    quota_words=("balance",),
    auth_words=(("token", "expired"),),
    moderation_words=("sensitive",),
    fault_words=("internal",),
    advice={AuthError: " (check the key)"},
)


def err(dialect: Dialect, answer: Answer) -> VendorError:
    return classify(dialect, answer, "v: it failed", vendor="v", request_id="r")


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (400, VendorRejected, False),
        (401, AuthError, False),
        (403, AuthError, False),
        (404, VendorRejected, False),
        (408, VendorTimeout, True),
        (409, VendorFault, True),
        (429, Throttled, True),
        (500, VendorFault, True),
        (503, VendorFault, True),
    ],
)
def test_the_status_alone(status: int, cls: type[VendorError], retryable: bool) -> None:
    e = err(PLAIN, Answer(status))
    assert type(e) is cls and e.retryable is retryable
    assert (e.status, e.vendor, e.request_id, e.message) == (status, "v", "r", "v: it failed")


def test_the_vendors_code_whole_or_by_its_dotted_parts() -> None:
    assert type(err(VENDOR, Answer(400, "Throttling.RateQuota"))) is Throttled
    assert type(err(VENDOR, Answer(None, "internalerror.timeout"))) is VendorFault
    fault = err(VENDOR, Answer(None, "InternalError"))
    assert fault.retryable and fault.vendor_code == "InternalError"
    assert type(err(VENDOR, Answer(403, "Arrearage"))) is QuotaError
    assert type(err(VENDOR, Answer(400, "Something.Else"))) is VendorRejected


def test_words_decide_before_the_status_but_never_on_a_5xx() -> None:
    assert type(err(VENDOR, Answer(429, words="Insufficient BALANCE"))) is QuotaError
    assert type(err(VENDOR, Answer(200, words="the token has expired"))) is AuthError
    assert type(err(VENDOR, Answer(400, words="a sensitive picture"))) is ContentRejected
    assert type(err(VENDOR, Answer(403, words="a sensitive picture"))) is AuthError
    for words in ("load balancer down", "token expired", "sensitive"):
        assert type(err(VENDOR, Answer(502, words=words))) is VendorFault


def test_a_failed_task() -> None:
    assert type(err(VENDOR, Answer(None, "X", "internal trouble"))) is VendorFault
    assert not err(VENDOR, Answer(None, "X", "internal trouble")).retryable
    assert not err(VENDOR, Answer(None, "SomethingNew")).retryable
    assert type(err(Dialect(failed=VendorRejected), Answer(None, "3333"))) is VendorRejected


def test_retry_after_should_retry_and_advice() -> None:
    throttled = err(PLAIN, Answer(429, headers={"Retry-After": "3"}))
    assert isinstance(throttled, Throttled) and throttled.retry_after == 3.0
    assert not err(PLAIN, Answer(500, headers={"X-Should-Retry": "false"})).retryable
    assert err(VENDOR, Answer(401)).message == "v: it failed (check the key)"
    overridden = Dialect(statuses={403: VendorFault}, refused=VendorFault)
    assert err(overridden, Answer(403)).retryable
    assert not err(overridden, Answer(400)).retryable
