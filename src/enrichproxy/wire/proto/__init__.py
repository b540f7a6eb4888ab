"""Classes generated from proto/remote.proto (``make proto``), committed so no install needs
protoc.

Nothing in enrichproxy imports them at run time: the codec (wire/codec.py) walks the protobuf
bytes itself, and the tests cross-check it against these classes. They import protobuf, which
is therefore a dependency of the ``test`` extra only, not of ``pip install .``
(tests/test_packaging.py checks that no run-time module loads it).
"""
