#!/usr/bin/env python3
"""A stock Python gRPC client (grpcio) on dunningd's admin Unix socket.

Usage: grpc_client.py unix:/path/to/admin.sock

Default channel options only: grpcio sends the percent-encoded socket path
as `:authority`, which the daemon must accept. Asks the health service,
lists the services through server reflection, and calls
dunningd.v1.Admin/GetStatus with descriptors resolved through reflection
(no generated code). Prints one JSON object: health, services, status.
"""

import json
import sys

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> None:
    target = sys.argv[1]
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="dunningd.v1.Admin"), timeout=10
        )
        reflection = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(reflection.get_services())
        method = DescriptorPool(reflection).FindMethodByName(
            "dunningd.v1.Admin.GetStatus"
        )
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        get_status = channel.unary_unary(
            "/dunningd.v1.Admin/GetStatus",
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )
        status = get_status(request(), timeout=10)
    print(
        json.dumps(
            {
                "health": health_pb2.HealthCheckResponse.ServingStatus.Name(
                    health.status
                ),
                "services": services,
                "status": json_format.MessageToDict(status),
            }
        )
    )


if __name__ == "__main__":
    main()
