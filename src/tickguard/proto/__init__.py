"""Protocol definitions tickguard serves, with their generated message classes (`make proto`).

The generated modules register the `inference.*` messages in protobuf's default pool, as Triton's
client does with its own copy of them: import them in the server process, not beside tritonclient.
"""
