"""Serving the app: the connection handler with its deadlines (``server``) and the supervisor of
``--workers`` processes (``workers``)."""
