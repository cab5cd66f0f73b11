"""CNI plugins: the shared core (plugins.core) and one module per plugin."""
