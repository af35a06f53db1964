import pytest
from polar_billing_client import links

SECRET = "page-secret-0123456789"


def test_a_signed_token_names_its_user_until_it_expires() -> None:
    token = links.sign(SECRET, "usr_1", ttl=900, now=1_000_000)
    assert links.verify(SECRET, token, now=1_000_899) == "usr_1"
    with pytest.raises(links.BadToken, match="expired"):
        links.verify(SECRET, token, now=1_000_901)


def test_a_tampered_user_id_is_refused() -> None:
    _user, expires, mac = links.sign(SECRET, "usr_1", now=1_000_000).split(".")
    other = links._b64(b"usr_2")
    with pytest.raises(links.BadToken, match="signature"):
        links.verify(SECRET, f"{other}.{expires}.{mac}", now=1_000_000)


def test_a_tampered_expiry_is_refused() -> None:
    user, expires, mac = links.sign(SECRET, "usr_1", now=1_000_000).split(".")
    with pytest.raises(links.BadToken, match="signature"):
        links.verify(SECRET, f"{user}.{int(expires) + 86_400}.{mac}", now=1_000_000)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = links.sign("someone-elses-secret", "usr_1", now=1_000_000)
    with pytest.raises(links.BadToken, match="signature"):
        links.verify(SECRET, token, now=1_000_000)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b", "a.b.c.d", "!!.12.??", "dXNy.notanumber.AAAA"])
def test_garbage_is_refused_not_crashed_on(garbage: str) -> None:
    with pytest.raises(links.BadToken):
        links.verify(SECRET, garbage, now=1_000_000)


def test_the_url_carries_only_the_token() -> None:
    url = links.status_page_url("https://chat.example/", SECRET, "usr_1")
    assert url.startswith("https://chat.example/subscription/status?token=") and "usr_1" not in url


def test_make_run_prints_a_secret_it_generated_and_only_a_fingerprint_of_the_operators() -> None:
    from dev.stack import secret_line

    mine = "whsec_b3BlcmF0b3Itc2VjcmV0LW9wZXJhdG9yLXNlY3JldA=="
    line = secret_line(mine, "from your environment", generated=False)
    assert mine not in line and mine.removeprefix("whsec_") not in line and "fingerprint" in line
    assert secret_line(mine, "generated", generated=True).endswith(mine)
