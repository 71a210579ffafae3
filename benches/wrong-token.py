#!/usr/bin/env python3
"""Print a well-formed gitgate token that no store holds: the prefix, a random id, 32 random
bytes and the right checksum (src/token.rs), so that gitgate takes it all the way to the store
(or its cache) before refusing it with 401 "invalid token" — the wrong token of benchmark 3. A
malformed one would be refused before the hash and the lookup, the cheapest refusal there is."""
import base64
import hashlib
import os

B32 = "abcdefghijklmnopqrstuvwxyz234567"
token_id = "".join(B32[b & 31] for b in os.urandom(12))
body = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
text = f"ggt_{token_id}_{body}"
bits = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> 2
print(text + "_" + "".join(B32[(bits >> (5 * (5 - i))) & 31] for i in range(6)))
