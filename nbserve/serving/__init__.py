"""The embedded inference server: Triton dynamic batching, KServe v2 over HTTP and gRPC, metrics.

Modules: ``batcher`` (Triton's dynamic batching), ``sequence`` (Triton's sequence batcher for stateful
models), ``ensemble_scheduler`` (ensembles as a DAG over the steps' batchers), ``stats`` (Triton's
statistics), ``core`` (models, routing, execution), ``protocol`` + ``http`` (v2 REST), ``grpc`` +
``_grpc_codec`` + ``_grpc_engine`` (v2 gRPC), ``metrics`` (Prometheus), ``server`` (in-kernel thread
mode, lifecycle), ``child`` (subprocess mode and ``nbserve serve``), ``remote`` (calling a v2 server).
"""
