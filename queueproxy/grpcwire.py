"""The bytes of one gRPC health check, by hand: message framing and two tiny protobuf messages.

The sidecar's gRPC readiness probe (queueproxy/h2probe.py) sends
`grpc.health.v1.Health/Check(HealthCheckRequest{service})` and reads
`HealthCheckResponse{status}`. Both messages have a single field, so encoding them here costs a
few lines, where grpcio and protobuf would add ~21 MB and ~0.25 s of import to a sidecar that
needs neither anywhere else. Nothing here does I/O.

- Message framing (gRPC over HTTP/2, "Length-Prefixed-Message"): a 1-byte compressed flag, a
  4-byte big-endian length, then the message.
- grpc/grpc-proto `grpc/health/v1/health.proto`:
  `message HealthCheckRequest { string service = 1; }`,
  `message HealthCheckResponse { ServingStatus status = 1; }` with
  `enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }`.
- Protobuf wire format (protobuf.dev/programming-guides/encoding): a tag varint
  `field << 3 | wire type`, then a varint (type 0), 8 bytes (1), a length-delimited value (2) or
  4 bytes (5). Unknown fields are skipped (so is field 1 in a wire type other than varint);
  a field that comes more than once takes its last value.

Every decoder raises `WireError` (a ValueError) on input it cannot take, and none of them reads
past the bytes it is given or allocates more than it was given.
"""

from __future__ import annotations

import struct

from queueproxy.statwire import WireError, decode_varint, encode_varint

HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SERVING = 1
# grpc/grpc doc/statuscodes.md, for log lines.
GRPC_STATUS = dict(enumerate(
    "OK CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND ALREADY_EXISTS "
    "PERMISSION_DENIED RESOURCE_EXHAUSTED FAILED_PRECONDITION ABORTED OUT_OF_RANGE UNIMPLEMENTED "
    "INTERNAL UNAVAILABLE DATA_LOSS UNAUTHENTICATED".split()
))  # fmt: skip
PREFIX_LENGTH = 5
_MAX_FIELD_NUMBER = (1 << 29) - 1  # protobuf's limit: a tag is a uint32 of field << 3 | type
_PREFIX = struct.Struct(">BI")


def frame(message: bytes) -> bytes:
    """One uncompressed gRPC message with its 5-byte prefix."""
    return _PREFIX.pack(0, len(message)) + message


def unframe(data: bytes, max_message: int) -> bytes:
    """The single gRPC message `data` holds (a unary response body).

    Raises WireError when the prefix is incomplete, the message is compressed (we never offer
    compression, so a compressed reply is a broken server), the length exceeds `max_message`,
    or the body holds fewer or more bytes than the prefix announced.
    """
    if len(data) < PREFIX_LENGTH:
        raise WireError(f"truncated gRPC message prefix ({len(data)} of 5 bytes)")
    compressed, length = _PREFIX.unpack_from(data)
    if compressed != 0:
        raise WireError(f"compressed flag {compressed} on a message we asked uncompressed")
    if length > max_message:
        raise WireError(f"gRPC message of {length} bytes exceeds the {max_message} allowed")
    if len(data) - PREFIX_LENGTH != length:
        raise WireError(
            f"gRPC message prefix says {length} bytes, the body holds {len(data) - PREFIX_LENGTH}"
        )
    return data[PREFIX_LENGTH:]


def encode_health_check_request(service: str) -> bytes:
    """HealthCheckRequest{service}; the empty string is the default, so it encodes to nothing."""
    if not service:
        return b""
    raw = service.encode("utf-8")
    return b"\x0a" + encode_varint(len(raw)) + raw  # field 1, wire type 2


def decode_health_check_response(data: bytes) -> int:
    """The `status` of a HealthCheckResponse (0 = UNKNOWN when absent, as proto3 defaults)."""
    status = 0
    offset = 0
    while offset < len(data):
        tag, offset = decode_varint(data, offset)
        field, wire_type = tag >> 3, tag & 7
        if not 1 <= field <= _MAX_FIELD_NUMBER:
            raise WireError(f"field number {field} outside 1..{_MAX_FIELD_NUMBER}")
        if wire_type == 0:
            value, offset = decode_varint(data, offset)
            if field == 1:
                status = _int32(value)
        elif wire_type == 1:
            offset = _skip(data, offset, 8)
        elif wire_type == 2:
            # Skipped even as field 1: `status` is singular, and a singular field in the wrong
            # wire type is an unknown field to protobuf's parsers (upb, protobuf-go), not a
            # packed value; taking it would read SERVING where kubelet reads UNKNOWN.
            length, offset = decode_varint(data, offset)
            offset = _skip(data, offset, length)
        elif wire_type == 5:
            offset = _skip(data, offset, 4)
        else:  # 3 and 4 are the deprecated groups, 6 and 7 do not exist
            raise WireError(f"wire type {wire_type} in field {field}")
    return status


def _int32(value: int) -> int:
    # An enum is an int32: parsers keep the varint's low 32 bits, sign-extended (a negative value
    # comes as a 10-byte varint), so 2**32 + 1 is SERVING to protobuf and to grpc-go alike.
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _skip(data: bytes, offset: int, length: int) -> int:
    if length > len(data) - offset:
        raise WireError(f"field of {length} bytes runs past the end of the message")
    return offset + length


def status_name(status: int) -> str:
    return SERVING_STATUS.get(status, f"status {status}")
