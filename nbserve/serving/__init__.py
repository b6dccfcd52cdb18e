"""The embedded inference server: Triton dynamic batching, KServe v2 over HTTP and gRPC, metrics.

Modules: ``batcher`` (Triton's dynamic batching), ``stats`` (Triton's statistics), ``core`` (models,
routing, execution), ``protocol`` + ``http`` (v2 REST), ``grpc`` (v2 gRPC), ``metrics`` (Prometheus),
``server`` (in-kernel thread mode and subprocess mode, lifecycle).
"""
