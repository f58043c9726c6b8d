"""What stands between a connection and the application: limits on the request head
(``httpguard``, a uvicorn protocol), and the ASGI middlewares (request log, security
headers, loopback-only hosts, body limits, rate limit)."""
