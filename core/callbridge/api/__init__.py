"""REST API pieces: error rendering (``errors``), token authentication (``auth``), strict JSON
bodies (``json_request``), ``OPTIONS`` answers (``allow_header``), the OpenAPI document's
configuration-dependent parts (``openapi``), and the controllers: ``connectors`` (with its
bodies in ``connector_shapes`` and its checks in ``connector_rules``), ``calls``, ``hooks``,
``rooms``.

The app (``callbridge.app.create_app``) mounts the controllers and puts what they need on
``app.state``: ``db`` (:class:`~callbridge.store.db.Database`), ``public_api_url``,
``provider_names`` and ``clock``.
"""
