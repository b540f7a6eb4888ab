"""The remote-write wire format: snappy and protobuf bytes in, values out (pure)."""
