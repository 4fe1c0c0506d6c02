"""Tests of auth.py: reading the secret file, and the laws of the HMAC challenge-response."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from position_distributor.auth import (
    MIN_SECRET_LENGTH,
    NONCE_SIZE,
    SecretError,
    load_secrets,
    new_nonce,
    prove,
    verify,
)

from .procs import run_as_user

A, B = "strategy_1", "strategy_2"
OLD = b"old-secret-0123456789abcdef"
NEW = b"new-secret-fedcba9876543210"


def proof_from(secret: bytes, na: bytes, nb: bytes, prover: str = A, verifier: str = B) -> bytes:
    """What ``prover`` sends ``verifier`` on a connection with these nonces."""
    return prove(secret, prover=prover, verifier=verifier, prover_nonce=na, verifier_nonce=nb)


def accepts(accepted: list[bytes], proof: bytes, na: bytes, nb: bytes) -> bool:
    """Whether B, holding ``accepted``, accepts A's ``proof`` on that connection."""
    return verify(accepted, proof, prover=A, verifier=B, prover_nonce=na, verifier_nonce=nb)


def secret_file(tmp_path: Path, text: str | bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(mode)
    return path


# Reading the secret file.


def test_a_secret_file_is_read_line_by_line(tmp_path: Path) -> None:
    """Each non-blank line is a secret, in file order, with surrounding whitespace dropped."""
    path = secret_file(tmp_path, f"  {NEW.decode()}  \n{OLD.decode()}\r\n")
    assert load_secrets(path) == ([NEW, OLD], None)


def test_comments_and_blank_lines_are_ignored(tmp_path: Path) -> None:
    """Blank lines and lines starting with '#' (after spaces) are not secrets."""
    path = secret_file(tmp_path, f"# rotated 2025-01\n\n   \n  # old one below\n{OLD.decode()}\n")
    assert load_secrets(path) == ([OLD], None)


def test_a_missing_secret_file_is_an_error_naming_it(tmp_path: Path) -> None:
    """A secret file that does not exist raises SecretError saying so, with the path."""
    path = tmp_path / "nowhere"
    with pytest.raises(SecretError, match=rf"{path} does not exist"):
        load_secrets(path)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "  \n# x\n"])
def test_a_file_with_no_secret_is_an_error(tmp_path: Path, text: str) -> None:
    """An empty file, or one of blank lines and comments only, raises 'holds no secret'."""
    with pytest.raises(SecretError, match="holds no secret"):
        load_secrets(secret_file(tmp_path, text))


def test_a_short_secret_is_an_error_saying_how_to_make_one(tmp_path: Path) -> None:
    """A secret under the minimum length is refused with its line, its length and a command."""
    short = "x" * (MIN_SECRET_LENGTH - 1)
    path = secret_file(tmp_path, f"# header\n{OLD.decode()}\n{short}\n")
    with pytest.raises(SecretError) as caught:
        load_secrets(path)
    message = str(caught.value)
    assert f"line 3 of {path}" in message
    assert f"{MIN_SECRET_LENGTH - 1} bytes long" in message
    assert "openssl rand -hex 32" in message


def test_a_secret_of_the_minimum_length_is_accepted(tmp_path: Path) -> None:
    """A secret exactly MIN_SECRET_LENGTH bytes long is enough."""
    secret = "k" * MIN_SECRET_LENGTH
    assert load_secrets(secret_file(tmp_path, secret)) == ([secret.encode()], None)


def test_a_directory_is_not_a_secret_file(tmp_path: Path) -> None:
    """A path naming a directory raises 'not a regular file' (or cannot be read)."""
    with pytest.raises(SecretError, match=r"not a regular file|cannot read"):
        load_secrets(tmp_path)


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """A named pipe is refused as not a regular file at once, without waiting for a writer."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException | object] = []

    def load() -> None:
        try:
            outcome.append(load_secrets(fifo))
        except BaseException as exc:  # recorded for the main thread
            outcome.append(exc)

    loader = threading.Thread(target=load, name="load-fifo")
    loader.start()
    loader.join(1.0)
    blocked = loader.is_alive()
    if blocked:
        # Unblock the loader's open() (a reader is waiting, so a non-blocking writer can
        # open), then close: it reads EOF and returns, so its thread ends.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        loader.join(10)
    assert not loader.is_alive()
    assert not blocked, "load_secrets blocked on a FIFO with no writer"
    assert isinstance(outcome[0], SecretError)
    assert "not a regular file" in str(outcome[0])


def test_a_path_through_a_file_cannot_be_read(tmp_path: Path) -> None:
    """A path whose parent is a file raises 'cannot read secret file' with the OS's reason."""
    parent = secret_file(tmp_path, OLD)
    with pytest.raises(SecretError, match=r"(?i)cannot read secret file .*: not a directory"):
        load_secrets(parent / "secret")


def test_an_unreadable_secret_file_is_an_error(tmp_path: Path) -> None:
    """A file the user cannot read raises 'cannot read secret file' with the OS's reason
    (checked in a child without root's power to read any file)."""
    path = secret_file(tmp_path, OLD, mode=0o000)
    result = run_as_user(
        "from pathlib import Path\n"
        "from position_distributor.auth import SecretError, load_secrets\n"
        "try:\n"
        f"    load_secrets(Path({str(path)!r}))\n"
        "except SecretError as exc:\n"
        "    print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"(?i)cannot read secret file .*permission denied", result.stdout)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700 | 0o020, 0o601])
def test_a_file_others_can_access_gets_a_warning(tmp_path: Path, mode: int) -> None:
    """A secret file with any group or other permission bit is loaded with a warning that
    shows the mode and the chmod to run."""
    path = secret_file(tmp_path, OLD, mode=mode)
    secrets, warning = load_secrets(path)
    assert secrets == [OLD]
    assert warning is not None
    assert "can be read by other users" in warning
    assert f"mode {mode:o}" in warning
    assert f"chmod 600 {path}" in warning


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_an_owner_only_file_gets_no_warning(tmp_path: Path, mode: int) -> None:
    """A secret file only its owner can access loads with no warning."""
    assert load_secrets(secret_file(tmp_path, OLD, mode=mode)) == ([OLD], None)


# The challenge-response.


def test_nonces_are_fresh_and_of_the_announced_size() -> None:
    """new_nonce returns NONCE_SIZE random bytes, different at each call."""
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == NONCE_SIZE for n in nonces)


def test_a_proof_is_an_hmac_sha256() -> None:
    """A proof is 32 bytes and depends on every input (a golden check of its shape)."""
    na, nb = b"a" * NONCE_SIZE, b"b" * NONCE_SIZE
    proof = proof_from(OLD, na, nb)
    assert len(proof) == 32
    variants = {
        proof_from(NEW, na, nb),
        proof_from(OLD, nb, na),
        proof_from(OLD, na, nb, prover=B, verifier=A),
        proof_from(OLD, na, b"c" * NONCE_SIZE),
    }
    assert proof not in variants and len(variants) == 4


secrets_ = st.binary(min_size=MIN_SECRET_LENGTH, max_size=64)
nonces = st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE)
names = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)


@given(secrets_, nonces, nonces)
def test_a_proof_with_the_shared_secret_verifies(secret: bytes, na: bytes, nb: bytes) -> None:
    """prove then verify with the same secret, names and nonces always succeeds."""
    assert accepts([secret], proof_from(secret, na, nb), na, nb)


@given(secrets_, secrets_, nonces, nonces)
def test_a_proof_with_another_secret_fails(
    secret: bytes, other: bytes, na: bytes, nb: bytes
) -> None:
    """A proof made with a secret the verifier does not hold never verifies."""
    assume(secret != other)
    assert not accepts([other], proof_from(secret, na, nb), na, nb)


@given(secrets_, nonces, nonces, nonces, nonces)
def test_no_replay_a_proof_is_for_its_own_nonces(
    secret: bytes, na: bytes, nb: bytes, na2: bytes, nb2: bytes
) -> None:
    """A proof recorded on one connection fails on any connection whose nonces differ."""
    assume((na, nb) != (na2, nb2))
    assert not accepts([secret], proof_from(secret, na, nb), na2, nb2)


@given(secrets_, nonces, nonces)
def test_no_reflection_a_nodes_own_proof_does_not_verify(
    secret: bytes, na: bytes, nb: bytes
) -> None:
    """B's proof to A, sent back to B as if A made it, fails: the roles are in the proof."""
    b_proof = proof_from(secret, nb, na, prover=B, verifier=A)
    assert not accepts([secret], b_proof, na, nb)
    # Nor does A's proof work for A as verifier on the same connection.
    a_proof = proof_from(secret, na, nb)
    assert not verify([secret], a_proof, prover=B, verifier=A, prover_nonce=nb, verifier_nonce=na)


@given(secrets_, nonces, nonces, names, names, names, names)
def test_names_are_bound_to_the_proof(
    secret: bytes, na: bytes, nb: bytes, p: str, v: str, p2: str, v2: str
) -> None:
    """A proof verifies for exactly the prover and verifier names it was made for."""
    assume((p, v) != (p2, v2))
    proof = prove(secret, prover=p, verifier=v, prover_nonce=na, verifier_nonce=nb)
    assert verify([secret], proof, prover=p, verifier=v, prover_nonce=na, verifier_nonce=nb)
    assert not verify([secret], proof, prover=p2, verifier=v2, prover_nonce=na, verifier_nonce=nb)


@given(secrets_, nonces, nonces)
def test_swapped_names_fail(secret: bytes, na: bytes, nb: bytes) -> None:
    """A proof from A to B does not pass as a proof from B to A with the same nonces."""
    proof = proof_from(secret, na, nb)
    assert not verify([secret], proof, prover=B, verifier=A, prover_nonce=na, verifier_nonce=nb)


def test_fields_cannot_slide_between_names_and_nonces() -> None:
    """Moving bytes from one name to the other (or into a nonce) changes the proof: every
    field is length-prefixed, so ('ab', 'c') and ('a', 'bc') are different contexts."""
    na, nb = b"n" * NONCE_SIZE, b"m" * NONCE_SIZE
    proof = prove(OLD, prover="ab", verifier="c", prover_nonce=na, verifier_nonce=nb)
    assert not verify([OLD], proof, prover="a", verifier="bc", prover_nonce=na, verifier_nonce=nb)
    proof2 = prove(OLD, prover="a", verifier="b", prover_nonce=na, verifier_nonce=nb)
    assert not verify(
        [OLD], proof2, prover="a", verifier="b" + "m", prover_nonce=na, verifier_nonce=nb[1:]
    )


@given(nonces, nonces, st.binary(max_size=64))
def test_a_random_proof_fails(na: bytes, nb: bytes, junk: bytes) -> None:
    """Arbitrary bytes (of any length, including empty) never verify."""
    assume(junk != proof_from(OLD, na, nb))
    assert not accepts([OLD, NEW], junk, na, nb)


def test_verify_with_no_accepted_secret_fails() -> None:
    """With an empty list of accepted secrets nothing verifies."""
    na, nb = new_nonce(), new_nonce()
    assert not accepts([], proof_from(OLD, na, nb), na, nb)


# Rotation: the first secret of the prover's file proves; every secret in the verifier's is
# accepted. The three steps of a rotation are [a] -> [a, b] -> [b, a] -> [b].

ROTATION_OK = [
    ([OLD], [OLD, NEW]),  # step 1: new added second on some nodes, old still first
    ([OLD, NEW], [OLD]),
    ([OLD, NEW], [NEW, OLD]),  # step 2: new first on some nodes, second on others
    ([NEW, OLD], [OLD, NEW]),
    ([NEW, OLD], [NEW]),  # step 3: old removed on some nodes
    ([NEW], [NEW, OLD]),
]


@pytest.mark.parametrize(("prover", "verifier"), ROTATION_OK)
def test_rotation_each_step_keeps_nodes_talking(prover: list[bytes], verifier: list[bytes]) -> None:
    """Two nodes at adjacent steps of a rotation accept each other's proof."""
    na, nb = new_nonce(), new_nonce()
    assert accepts(verifier, proof_from(prover[0], na, nb), na, nb)


@pytest.mark.parametrize(("prover", "verifier"), [([OLD], [NEW]), ([NEW], [OLD])])
def test_rotation_skipping_a_step_breaks(prover: list[bytes], verifier: list[bytes]) -> None:
    """A node still on the old secret alone and one already on the new alone do not talk."""
    na, nb = new_nonce(), new_nonce()
    assert not accepts(verifier, proof_from(prover[0], na, nb), na, nb)


def test_rotation_the_new_secret_only_proves_once_first() -> None:
    """[a] verifying a node at [b, a] fails: a node proves with its first secret only, so the
    new secret may go first only once every node accepts it."""
    na, nb = new_nonce(), new_nonce()
    assert not accepts([OLD], proof_from(NEW, na, nb), na, nb)


@given(st.lists(secrets_, min_size=1, max_size=4), st.data())
def test_any_accepted_secret_verifies_wherever_it_is_listed(
    accepted: list[bytes], data: st.DataObject
) -> None:
    """A proof made with any secret in the verifier's list verifies, whatever its position."""
    secret = data.draw(st.sampled_from(accepted))
    na, nb = new_nonce(), new_nonce()
    assert accepts(accepted, proof_from(secret, na, nb), na, nb)
