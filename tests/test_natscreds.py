"""The ``.creds`` file check: a user's JWT and its seed are found and checked, and anything
else is one ``CredsError`` sentence, never another exception."""

from __future__ import annotations

import base64
import contextlib
import json

import nkeys
import pytest
from hypothesis import given
from hypothesis import strategies as st

from position_distributor.natscreds import CredsError, parse_creds

from .nats_jwt import Identity, Operator, creds_text

OPERATOR = Operator()
FIRM = OPERATOR.account("FIRM")
JWT, SEED = FIRM.user("s1", publish=["$KV.positions.s1.>"])
GOOD = creds_text(JWT, SEED)


def test_a_creds_file_as_nsc_writes_it() -> None:
    """The JWT and seed come out of their armour; the user, name and account are the JWT's."""
    creds = parse_creds(GOOD)
    assert (creds.jwt, creds.seed) == (JWT, SEED)
    assert creds.user == nkeys.from_seed(SEED.encode()).public_key.decode()
    assert creds.name == "s1"
    assert creds.account == FIRM.key.public


def test_crlf_line_ends_and_indentation_are_accepted() -> None:
    """A file written on Windows, or indented by a config tool, still parses, and is handed on
    in the canonical layout (nats-py takes the line after each BEGIN line as it is)."""
    text = "\r\n".join("  " + line for line in GOOD.splitlines())
    creds = parse_creds(text)
    assert creds.jwt == JWT
    lines = creds.text().split("\n")
    assert lines[lines.index("-----BEGIN NATS USER JWT-----") + 1] == JWT
    assert lines[lines.index("-----BEGIN USER NKEY SEED-----") + 1] == SEED
    assert parse_creds(creds.text()) == creds


def _claims_jwt(claims: dict[str, object]) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'typ': 'JWT', 'alg': 'ed25519-nkey'})}.{part(claims)}.c2ln"


def _user_claims(**changes: object) -> dict[str, object]:
    public = nkeys.from_seed(SEED.encode()).public_key.decode()
    claims: dict[str, object] = {"sub": public, "iss": FIRM.key.public, "nats": {"type": "user"}}
    claims.update(changes)
    return claims


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no user JWT in it"),
        ("-----BEGIN NATS USER JWT-----\n\n------END NATS USER JWT------\n", "no user JWT"),
        (GOOD.split("\n\n")[0], "no user nkey seed in it"),
        (creds_text("a.b", SEED), "not three dot-separated parts"),
        (creds_text("a.!!!.c", SEED), "claims do not decode"),
        (creds_text(_claims_jwt([1, 2]), SEED), "claims are not a JSON object"),  # type: ignore[arg-type]
        (creds_text(FIRM.jwt, SEED), "its JWT is an 'account' JWT, not a user's"),
        (creds_text(_claims_jwt(_user_claims(nats=7)), SEED), "a JWT without nats.type"),
        (creds_text(_claims_jwt(_user_claims(sub=None)), SEED), "names no user (sub)"),
        (creds_text(_claims_jwt(_user_claims(exp=1)), SEED), "expired at 1970-01-01 00:00:01"),
        (creds_text(JWT, FIRM.key.seed), "not a user nkey seed (SU...)"),
        (creds_text(JWT, "SU" + "A" * 56), "seed does not decode"),
        (creds_text(JWT, Identity.new(nkeys.PREFIX_BYTE_USER).seed), "belong to different users"),
        (GOOD + "x" * 70_000, "not a .creds file"),
    ],
)
def test_what_is_wrong_is_said(text: str, message: str) -> None:
    """Each way a file can be wrong gets its own sentence."""
    with pytest.raises(CredsError) as raised:
        parse_creds(text)
    assert message in str(raised.value)


def test_a_jwt_not_yet_expired_is_accepted() -> None:
    """An ``exp`` in the future passes (the server judges the rest)."""
    text = creds_text(_claims_jwt(_user_claims(exp=2_000_000_000)), SEED)
    assert parse_creds(text, now=1_000_000_000).seed == SEED


@given(st.text(max_size=400))
def test_any_text_is_a_creds_error_or_creds(text: str) -> None:
    """Garbage never raises anything but CredsError."""
    with contextlib.suppress(CredsError):
        parse_creds(text)


@given(st.integers(0, len(GOOD) - 1), st.text(max_size=8))
def test_a_damaged_file_is_a_creds_error_or_still_good(at: int, junk: str) -> None:
    """Any few characters replaced anywhere: a CredsError, or creds whose seed is intact and
    whose JWT is still made for that seed's user (the damage missed what is checked)."""
    text = GOOD[:at] + junk + GOOD[at + len(junk) :]
    try:
        creds = parse_creds(text)
    except CredsError:
        return
    assert (creds.seed, creds.user) == (SEED, parse_creds(GOOD).user)
