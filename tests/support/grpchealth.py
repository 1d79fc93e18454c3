"""The gRPC health-checking protocol the way a real server speaks it: its messages compiled by the protobuf runtime
(from a descriptor written here, as `grpc/health/v1/health.proto` declares them), and a grpcio server whose answer
a test flips.

`HealthApp` serves `grpc.health.v1.Health/Check` and `demo.Echo/WhoAmI` (answers the instance's name) on a loopback
port, from a thread pool; `close()` stops it.
"""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "demo.Echo"


def _health_messages() -> tuple[Any, Any]:
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="meshcast_tests/health.proto", package="grpc.health.v1",
                                               syntax="proto3")
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    response = proto.message_type.add(name="HealthCheckResponse")
    enum = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        enum.value.add(name=name, number=number)
    response.field.add(name="status", number=1, type=field.TYPE_ENUM, label=field.LABEL_OPTIONAL,
                       type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")))


HealthCheckRequest, HealthCheckResponse = _health_messages()
SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3


class HealthApp:
    """A gRPC server; `answer` is what Health/Check says about `SERVICE`: "SERVING", "NOT_SERVING", or
    "UNIMPLEMENTED" (the call fails with that gRPC status, a trailers-only answer). Other services: SERVICE_UNKNOWN.
    Counts probes (and what they asked about) and WhoAmI calls."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.answer = "SERVING"
        self.probes = 0
        self.calls = 0
        self.asked: set[str] = set()
        self.user_agents: set[str] = set()
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
                "Check": grpc.unary_unary_rpc_method_handler(self._check)}),
            grpc.method_handlers_generic_handler(SERVICE, {
                "WhoAmI": grpc.unary_unary_rpc_method_handler(self._whoami)}),
        ))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def flip(self, answer: str) -> int:
        """Answer `answer` from now on; the probes counted so far (every later probe gets the new answer)."""
        with self._lock:
            self.answer = answer
            return self.probes

    def _check(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        asked = HealthCheckRequest.FromString(request).service
        with self._lock:
            self.probes += 1
            self.asked.add(asked)
            self.user_agents.add(dict(context.invocation_metadata()).get("user-agent", ""))
            answer = self.answer
        if answer == "UNIMPLEMENTED":
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "no health service")
        status = SERVICE_UNKNOWN if asked != SERVICE else SERVING if answer == "SERVING" else NOT_SERVING
        return bytes(HealthCheckResponse(status=status).SerializeToString())

    def _whoami(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.calls += 1
        return self.name.encode()

    def close(self) -> None:
        self.server.stop(0).wait(5)
