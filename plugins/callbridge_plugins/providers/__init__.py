"""Built-in telephony providers: voice-webhook parsing, answer markup and media-socket adapters."""
