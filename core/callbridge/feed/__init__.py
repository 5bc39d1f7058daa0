"""The live event feed behind the event socket (``WS /v2/ws``): one poller per process reads
the store's ``events`` table in order and hands each new event to the sockets subscribed to it.

- :mod:`~callbridge.feed.records`: an event row as the feed carries it, and its socket form.
- :mod:`~callbridge.feed.topics`: topic syntax and which topics an event matches.
- :mod:`~callbridge.feed.messages`: the socket protocol's messages, both ways.
- :mod:`~callbridge.feed.access`: which topics an API key may subscribe to.
- :mod:`~callbridge.feed.outbox`: one socket's bounded queue of outgoing messages.
- :mod:`~callbridge.feed.session`: one socket's subscriptions, resume and live delivery.
- :mod:`~callbridge.feed.poller`: the process-wide poller (:class:`EventFeed`).
"""
