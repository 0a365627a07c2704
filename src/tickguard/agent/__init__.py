"""The tickguard Kapacitor UDF agent: our own implementation of the socket-UDF protocol.

Modules: `framing` (varint-delimited messages), `options` (TICKscript options), `encode` (output
points), `scoring` (HTTP client with retries and a circuit breaker), `connection` (one task node),
`server` (the Unix-socket listener), `metrics`, `watchdog` and `cli`.
"""
