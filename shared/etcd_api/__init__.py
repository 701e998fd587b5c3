"""etcd's v3 API messages: ``kv.proto``, ``auth.proto`` and ``rpc.proto`` here, compiled into
``*_pb2.py`` by ``scripts/gen_etcd_api.py`` when the package is set up or built (never
committed: the generated code must match the installed protobuf runtime)."""
