"""Provider simulators: play a provider's side of a call against a callbridge server."""
