"""MPTCP v1's cryptographic pieces (RFC 8684): keys, tokens and IDSNs (§3.1), the MP_JOIN
(§3.2) and ADD_ADDR (§3.4.1) HMACs, the DSS checksum (§3.3.1), and a token table.

Keys, tokens, nonces and sequence numbers are integers; wherever they are hashed they are
written in network byte order, as on the wire (keys 8 bytes, nonces 4, ports 2). HMACs are
bytes. Randomness comes only from the `random.Random` a caller passes in.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from testbed.stack.wire.checksum import fold_checksum, ones_complement_sum

_MOD = 0xFFFF


def _key_bytes(key: int) -> bytes:
    if not 0 <= key < 1 << 64:
        raise ValueError(f"an MPTCP key is 64 bits, not {key}")
    return key.to_bytes(8, "big")


def _nonce_bytes(nonce: int) -> bytes:
    if not 0 <= nonce < 1 << 32:
        raise ValueError(f"an MP_JOIN random number is 32 bits, not {nonce}")
    return nonce.to_bytes(4, "big")


def key_token(key: int) -> int:
    """The token of a key: the most significant 32 bits of SHA-256(key) (§3.1). It names
    the connection in MP_JOIN SYNs sent to the key's owner."""
    return int.from_bytes(hashlib.sha256(_key_bytes(key)).digest()[:4], "big")


def key_idsn(key: int) -> int:
    """The initial data sequence number of the key owner's sending direction: the least
    significant 64 bits of SHA-256(key) (§3.1). Its first data byte is IDSN + 1, the
    data-level SYN taking the IDSN itself (§3.3)."""
    return int.from_bytes(hashlib.sha256(_key_bytes(key)).digest()[-8:], "big")


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


# MP_JOIN (§3.2). Host A sends the SYN (and the third ACK), host B answers with the SYN/ACK;
# Key-A and Key-B are the keys each host sent in MP_CAPABLE, R-A and R-B the random numbers
# of the MP_JOIN SYN and SYN/ACK. A is whoever opens the subflow, not the connection's client.
# Keyword-only arguments, because swapping A and B still gives a well-formed wrong answer.

def join_syn_ack_hmac(*, key_a: int, key_b: int, nonce_a: int, nonce_b: int) -> bytes:
    """The truncated HMAC host B puts in the MP_JOIN SYN/ACK (§3.2): the leftmost 64 bits of
    HMAC-SHA256(Key=(Key-B + Key-A), Msg=(R-B + R-A))."""
    return _hmac_sha256(_key_bytes(key_b) + _key_bytes(key_a),
                        _nonce_bytes(nonce_b) + _nonce_bytes(nonce_a))[:8]


def join_ack_hmac(*, key_a: int, key_b: int, nonce_a: int, nonce_b: int) -> bytes:
    """The HMAC host A puts in the MP_JOIN third ACK (§3.2): the leftmost 160 bits of
    HMAC-SHA256(Key=(Key-A + Key-B), Msg=(R-A + R-B))."""
    return _hmac_sha256(_key_bytes(key_a) + _key_bytes(key_b),
                        _nonce_bytes(nonce_a) + _nonce_bytes(nonce_b))[:20]


def add_addr_hmac(*, sender_key: int, receiver_key: int, address_id: int,
                  address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                  port: int | None) -> bytes:
    """The truncated HMAC of an ADD_ADDR (§3.4.1): the rightmost 64 bits of
    HMAC-SHA256(Key=(sender's key + receiver's key), Msg=(Address ID + IP address + port)).
    Without a port in the option the message still ends in two zero bytes (§3.4.1)."""
    if not 0 <= address_id <= 0xFF:
        raise ValueError(f"address ID {address_id} is not 8 bits")
    port_value = 0 if port is None else port
    if not 0 <= port_value <= 0xFFFF:
        raise ValueError(f"port {port_value} is not 16 bits")
    message = bytes((address_id,)) + address.packed + port_value.to_bytes(2, "big")
    return _hmac_sha256(_key_bytes(sender_key) + _key_bytes(receiver_key), message)[-8:]


def _dss_pseudo_header_sum(data_seq: int, subflow_seq: int, data_level_length: int) -> int:
    # §3.3.1: 64-bit DSN (the full one even when the option carries 32 bits), 32-bit
    # relative subflow sequence number, 16-bit data-level length, 16 bits of zero.
    if not 0 <= data_seq < 1 << 64:
        raise ValueError(f"data_seq {data_seq} is not 64 bits")
    if not 0 <= subflow_seq < 1 << 32:
        raise ValueError(f"subflow_seq {subflow_seq} is not 32 bits")
    if not 0 <= data_level_length <= 0xFFFF:
        raise ValueError(f"data_level_length {data_level_length} is not 16 bits")
    header = (data_seq.to_bytes(8, "big") + subflow_seq.to_bytes(4, "big")
              + data_level_length.to_bytes(2, "big") + b"\x00\x00")
    return ones_complement_sum(header)


def dss_checksum(data_seq: int, subflow_seq: int, data_level_length: int,
                 payload: bytes) -> int:
    """The DSS checksum field (§3.3.1): the Internet checksum of the pseudo-header (64-bit
    DSN, relative subflow sequence number, data-level length, zero checksum) followed by the
    payload the mapping covers."""
    # The pseudo-header is 16 bytes, so the payload's words line up after it.
    return fold_checksum(_dss_pseudo_header_sum(data_seq, subflow_seq, data_level_length)
                         + ones_complement_sum(payload))


def verify_dss_checksum(data_seq: int, subflow_seq: int, data_level_length: int,
                        payload: bytes, checksum: int) -> bool:
    """Whether `checksum` is right for the mapping and its payload (§3.3.1). The sum with the
    checksum in place is checked, so +0 and -0 (0x0000, 0xffff) are judged alike."""
    total = (_dss_pseudo_header_sum(data_seq, subflow_seq, data_level_length) + checksum
             + ones_complement_sum(payload))
    return total != 0 and total % _MOD == 0


def generate_key(rng: random.Random, token_in_use: Callable[[int], bool],
                 max_attempts: int = 1000) -> int:
    """A fresh 64-bit key whose token `token_in_use` does not know (§3.1: the token must be
    unique on the host, so a key with a colliding token is drawn again).

    RuntimeError after `max_attempts` draws: with 32-bit tokens that means the callable
    answers True to everything, and looping forever would hide the bug.
    """
    for _ in range(max_attempts):
        key = rng.getrandbits(64)
        if not token_in_use(key_token(key)):
            return key
    raise RuntimeError(f"no key with a free token in {max_attempts} draws")


T = TypeVar("T")


class TokenCollisionError(KeyError):
    """The token is already taken by another connection."""


class TokenTable(Generic[T]):
    """Token -> connection for one host: where MP_JOIN SYNs find their connection (§3.2).
    Insertion never replaces an entry."""

    def __init__(self) -> None:
        self._by_token: dict[int, T] = {}

    def add(self, token: int, connection: T) -> None:
        """Register `connection` under `token`; TokenCollisionError if it is taken."""
        if token in self._by_token:
            raise TokenCollisionError(token)
        self._by_token[token] = connection

    def allocate(self, rng: random.Random, connection: T) -> int:
        """Draw a key whose token is free, register `connection` under that token, and
        return the key."""
        key = generate_key(rng, self.__contains__)
        self.add(key_token(key), connection)
        return key

    def get(self, token: int) -> T | None:
        return self._by_token.get(token)

    def remove(self, token: int) -> T | None:
        """Forget `token`; returns its connection, or None if it was not there."""
        return self._by_token.pop(token, None)

    def __contains__(self, token: object) -> bool:
        return token in self._by_token

    def __len__(self) -> int:
        return len(self._by_token)

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_token)
