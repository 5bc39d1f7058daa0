"""Built-in room transports."""
