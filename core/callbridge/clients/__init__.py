"""Provider-neutral client helpers used by the CLIs: audio, recordings, room and call clients."""
