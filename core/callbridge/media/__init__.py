"""Audio on the media path: G.711 and L16 codecs, resampling, framing, pacing and analysis."""
