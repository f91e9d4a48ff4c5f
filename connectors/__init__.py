"""Built-in connectors: one module per connector, each action a :class:`connectors.base.Connector`."""

# ``taskplatform`` builds its Celery app on import, and that discovers the connectors, which
# import ``taskplatform.defaults``/``errors``. Importing it here first makes ``import
# connectors.base`` (or any connector module) work as the first import of a process instead of
# failing on the circular import through a half-initialised ``connectors.base``.
import taskplatform  # noqa: F401,I001
