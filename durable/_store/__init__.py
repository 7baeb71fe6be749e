"""The store: the only code that talks to Redis (key layout, Lua scripts, the partition commit,
streams, leases, the queries of the operator views, status notifications)."""
