"""Built-in plugins, loaded by dotted path from ``gateway.plugin_manager.DEFAULT_PLUGINS``."""
