"""Stubs generated from hello.proto by grpcio-tools (scripts/gen_protos.py); do not edit them."""
