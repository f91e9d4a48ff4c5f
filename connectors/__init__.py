"""Built-in connectors: one module per connector, each action a :class:`connectors.base.Connector`."""
