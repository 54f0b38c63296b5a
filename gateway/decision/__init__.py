"""The forward-auth decision service: the proxy's decisions for a host proxy that asks.

nginx ``auth_request``, Traefik ``ForwardAuth``, Caddy ``forward_auth`` and Envoy
``ext_authz`` (HTTP and gRPC) each get a small adapter that reads the original request from
what the host proxy forwarded (``forwarded``), judges it with the proxy's own steps
(``verdict``, over ``gateway.request_decision``) and answers in the host proxy's shape
(``answers``, ``grpc_service``). Nothing here decides anything itself.
"""
