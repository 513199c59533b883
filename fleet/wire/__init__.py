"""Layer 2: the wire format (msgpack schemas, framing, signed envelopes)."""
