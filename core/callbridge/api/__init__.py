"""REST API pieces: error rendering, token authentication, and the controllers.

The app (``callbridge.app.create_app``) mounts the controllers and puts what they need on
``app.state``: ``db`` (:class:`~callbridge.store.db.Database`), ``public_api_url``,
``provider_names`` and ``clock``.
"""
