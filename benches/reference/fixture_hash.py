"""The hash the fixture scripts record of a token-id sequence, so that a Rust test can check
that sieve's tokenizer produced the same ids (the tests compute the same hash)."""


def fnv1a64(ids):
    """FNV-1a over the ids as little-endian u32 bytes, as 16 hex digits."""
    h = 0xCBF29CE484222325
    for i in ids:
        for b in int(i).to_bytes(4, "little"):
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"
