"""Fleet-wide limits on Redis: one plan limit, one rate gate, one retry budget per namespace.

::

    from resilience import ResilienceMiddleware
    from resilience.redis import RedisStore

    store = RedisStore.from_url("redis://127.0.0.1:6379/0", namespace="breezeblue:acct-42")
    mw = ResilienceMiddleware(max_attempts=5, max_elapsed=60.0, store=store)

Every process (on any host) that uses the same Redis and namespace shares the adaptive
concurrency limit and its permits, the rate gate and pacing rate of each origin, and the retry
budget. The rules are :class:`~resilience.LocalStore`'s; the state lives in Redis and changes
only in Lua scripts that read Redis's own clock. If Redis cannot be reached the store falls
back to local, bounded limits and rejoins when Redis is back: no caller sees a Redis error.

Needs redis-py (``pip install 'resilience[redis]'``) and asyncio (redis-py's asyncio client).

The package's modules are the store's collaborators: ``_store`` (the Store protocol and the
admission loop), ``_admission`` (the handles it hands out), ``_source`` (where clients come
from: a URL, a cluster URL, or the app's own client), ``_connection`` (per-loop clients and
one Redis call), ``_leases`` (permits held, returned, renewed), ``_parking`` (waiters and
wake-ups), ``_fallback`` (local limits and the probe), ``_budget`` (the shared retry budget),
``_settings``, ``_keys``, ``_tasks``, and ``_scripts`` (the Lua in ``scripts/``, with the
constants of the pure rules rendered in). A new feature's script is a new file in
``scripts/`` (shared Lua: a new ``scripts/lib/NN_name.lua``), run through
``Scripts.named(name)``.
"""

from ._store import RedisStore, RedisStoreStats

__all__ = ["RedisStore", "RedisStoreStats"]
