//! gRPC admin API. The only module that knows protobuf.
