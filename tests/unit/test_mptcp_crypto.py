"""MPTCP keys, tokens, HMACs and the DSS checksum (RFC 8684 §3.1, §3.2, §3.3.1, §3.4.1).
Expected values are computed here straight from hashlib/hmac and a word-by-word RFC 1071
sum, spelling the RFC's key and message order out, not through the module under test.
(tests/netns/test_mptcp_tshark.py checks the same functions against Linux.)"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.stack.mptcp.crypto import (
    TokenCollisionError,
    TokenTable,
    add_addr_hmac,
    dss_checksum,
    generate_key,
    join_ack_hmac,
    join_syn_ack_hmac,
    key_idsn,
    key_token,
    verify_dss_checksum,
)

KEY_A = 0x0123456789ABCDEF  # host A opens the subflow (sends the MP_JOIN SYN)
KEY_B = 0xFEDCBA9876543210
R_A, R_B = 0x01020304, 0xA0B0C0D0

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)


def test_token_and_idsn_are_the_ends_of_sha256_of_the_key() -> None:
    digest = hashlib.sha256(bytes.fromhex("0123456789abcdef")).hexdigest()
    assert key_token(KEY_A) == int(digest[:8], 16)
    assert key_idsn(KEY_A) == int(digest[-16:], 16)


@given(u64)
def test_token_and_idsn_for_any_key(key: int) -> None:
    digest = hashlib.sha256(struct.pack("!Q", key)).digest()
    assert key_token(key) == struct.unpack("!I", digest[:4])[0]
    assert key_idsn(key) == struct.unpack("!Q", digest[24:])[0]


def test_join_syn_ack_hmac_is_keyed_b_then_a_and_truncated_left() -> None:
    expected = hmac.new(bytes.fromhex("fedcba9876543210" "0123456789abcdef"),
                        bytes.fromhex("a0b0c0d0" "01020304"), hashlib.sha256).digest()[:8]
    assert join_syn_ack_hmac(key_a=KEY_A, key_b=KEY_B, nonce_a=R_A, nonce_b=R_B) == expected


def test_join_ack_hmac_is_keyed_a_then_b_and_160_bits() -> None:
    expected = hmac.new(bytes.fromhex("0123456789abcdef" "fedcba9876543210"),
                        bytes.fromhex("01020304" "a0b0c0d0"), hashlib.sha256).digest()[:20]
    assert join_ack_hmac(key_a=KEY_A, key_b=KEY_B, nonce_a=R_A, nonce_b=R_B) == expected


def test_the_two_join_hmacs_differ_and_depend_on_the_roles() -> None:
    syn_ack = join_syn_ack_hmac(key_a=KEY_A, key_b=KEY_B, nonce_a=R_A, nonce_b=R_B)
    ack = join_ack_hmac(key_a=KEY_A, key_b=KEY_B, nonce_a=R_A, nonce_b=R_B)
    assert syn_ack != ack[:8]
    # B's SYN/ACK HMAC is what A's third-ACK HMAC would be with the roles swapped.
    assert syn_ack == join_ack_hmac(key_a=KEY_B, key_b=KEY_A, nonce_a=R_B, nonce_b=R_A)[:8]


def test_add_addr_hmac_ipv4_with_port_takes_the_rightmost_64_bits() -> None:
    message = bytes((5,)) + bytes((192, 0, 2, 1)) + (8080).to_bytes(2, "big")
    expected = hmac.new(bytes.fromhex("0123456789abcdef" "fedcba9876543210"), message,
                        hashlib.sha256).digest()[-8:]
    assert add_addr_hmac(sender_key=KEY_A, receiver_key=KEY_B, address_id=5,
                         address=ipaddress.IPv4Address("192.0.2.1"), port=8080) == expected


def test_add_addr_hmac_without_port_hashes_two_zero_bytes() -> None:
    address = ipaddress.IPv6Address("2001:db8::1")
    message = bytes((1,)) + address.packed + b"\x00\x00"
    expected = hmac.new(bytes.fromhex("fedcba9876543210" "0123456789abcdef"), message,
                        hashlib.sha256).digest()[-8:]
    assert add_addr_hmac(sender_key=KEY_B, receiver_key=KEY_A, address_id=1,
                         address=address, port=None) == expected


def rfc1071_by_words(data: bytes) -> int:
    """The Internet checksum the slow way: 16-bit words, end-around carry, complement."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@given(u64, u32, st.integers(0, 0xFFFF), st.binary(max_size=300))
def test_dss_checksum_over_its_pseudo_header_and_payload(
        dsn: int, ssn: int, length: int, payload: bytes) -> None:
    header = struct.pack("!QIHH", dsn, ssn, length, 0)
    expected = rfc1071_by_words(header + payload)
    checksum = dss_checksum(dsn, ssn, length, payload)
    # ±0: a sum of zero words has two spellings; any other value has one.
    assert checksum == expected or {checksum, expected} == {0, 0xFFFF}
    assert verify_dss_checksum(dsn, ssn, length, payload, checksum)
    assert rfc1071_by_words(struct.pack("!QIHH", dsn, ssn, length, checksum) + payload) == 0


@given(u64, u32, st.binary(min_size=1, max_size=100), st.integers(0, 7), st.data())
def test_dss_checksum_catches_a_flipped_bit(dsn: int, ssn: int, payload: bytes, bit: int,
                                            data: st.DataObject) -> None:
    checksum = dss_checksum(dsn, ssn, len(payload), payload)
    where = data.draw(st.integers(0, len(payload) - 1))
    damaged = bytearray(payload)
    damaged[where] ^= 1 << bit
    assert not verify_dss_checksum(dsn, ssn, len(payload), bytes(damaged), checksum)
    assert not verify_dss_checksum(dsn ^ 1, ssn, len(payload), payload, checksum)


def test_generate_key_is_deterministic_and_skips_tokens_in_use() -> None:
    first = generate_key(random.Random(7), lambda token: False)
    assert first == generate_key(random.Random(7), lambda token: False)
    assert first == random.Random(7).getrandbits(64)
    # Refuse the first key's token: the next draw of the same generator is taken.
    rng = random.Random(7)
    rng.getrandbits(64)
    second = rng.getrandbits(64)
    taken = {key_token(first)}
    assert generate_key(random.Random(7), taken.__contains__) == second


def test_generate_key_gives_up_instead_of_looping_forever() -> None:
    with pytest.raises(RuntimeError):
        generate_key(random.Random(1), lambda token: True, max_attempts=5)


def test_token_table() -> None:
    table: TokenTable[str] = TokenTable()
    rng = random.Random(3)
    keys = [table.allocate(rng, f"conn{i}") for i in range(100)]
    assert len(table) == 100 == len({key_token(k) for k in keys})
    assert table.get(key_token(keys[42])) == "conn42"
    with pytest.raises(TokenCollisionError):
        table.add(key_token(keys[0]), "intruder")
    assert table.get(key_token(keys[0])) == "conn0"
    assert table.remove(key_token(keys[0])) == "conn0"
    assert key_token(keys[0]) not in table
    assert table.remove(key_token(keys[0])) is None
    assert set(table) == {key_token(k) for k in keys[1:]}
